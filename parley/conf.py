"""Parley's settings: one `PARLEY = {...}` dict in the host project's Django settings.

    PARLEY = {"MAX_SOCKETS_PER_USER": 10, "RESERVED_SLUGS": ["admin"]}

    from parley.conf import parley_settings
    parley_settings.MAX_SOCKETS_PER_USER  # 10; any key not in the dict: its default

Every key has a default: the limits of parley/limits.py (docs/security.md tables them) and the
options declared below (README "Configuration"); no dict at all means every default. A key
Parley does not know, or a value of the wrong type, raises ImproperlyConfigured naming the key
(and the known keys it is closest to) when Django starts (ParleyConfig.ready), not when a socket
first reads it; so does a setting beside the dict named like an environment variable
(`PARLEY_MAX_FRAME_BYTES = 100`), which nothing reads.

The values are plain attributes of `parley_settings`, rebuilt whenever the PARLEY setting changes
(Django's setting_changed: override_settings, pytest-django's `settings` fixture), so a read on a
hot path is an attribute lookup, never a dict merge.

`from_environ()` builds the dict from `PARLEY_<KEY>` environment variables: what the standalone
server (config/settings.py) does, and what a host that configures itself from its environment
can do too.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

ENV_PREFIX = "PARLEY_"

NUMBER, BOOL, STRING, STRINGS = "number", "bool", "string", "strings"


@dataclass(frozen=True, slots=True)
class Option:
    """A key of the PARLEY dict that is not a limit (limits are parley.limits.Limit)."""

    key: str
    default: Any
    kind: str  # NUMBER (an int or float >= 0), BOOL, STRING, or STRINGS (a list of strings)
    description: str
    check: Callable[[Any], str | None] | None = None  # the problem with a value, or None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key


def _origins_problem(origins: tuple[str, ...]) -> str | None:
    for origin in origins:
        if not origin.startswith(("http://", "https://")):
            return f"{origin!r} is not an origin like https://chat.example.com"
    return None


def _networks_problem(entries: tuple[str, ...]) -> str | None:
    import ipaddress

    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return f"{entry!r} is not an IP address or network like 10.0.0.0/8"
    return None


OPTIONS = [
    # CSRF_TRUSTED_ORIGINS count too: a page trusted to POST with the session (and so to make
    # API tokens) gains nothing by being refused the socket.
    Option("ALLOWED_ORIGINS", (), STRINGS,
           "full origins (`https://chat.example.com`, `https://*.example.com`), besides the "
           "socket's own, whose pages may open the WebSocket with the user's cookie; "
           "CSRF_TRUSTED_ORIGINS count too", check=_origins_problem),
    Option("RESERVED_SLUGS", (), STRINGS,
           "room slugs nobody may create (POST /api/rooms answers slug_unavailable)"),
    Option("HISTORY_PAGE_DEFAULT", 50, NUMBER,
           "messages in a join or history page when the client names no limit (at most "
           "HISTORY_PAGE_MAX)"),
    Option("SEARCH_PAGE_DEFAULT", 20, NUMBER,
           "results in a search page when the request names no limit (at most SEARCH_PAGE_MAX)"),
    Option("GAP_FILL_DELAY_MS", 250, NUMBER,
           "how long a socket waits for a missing sequence number before reading it from the "
           "database"),
    # Redis is optional: without it one process serves every socket (the hub, presence and the
    # limits' counters live in its memory). With it, several processes share rooms and presence.
    Option("REDIS_URL", "", STRING,
           "Redis for several server processes (e.g. redis://127.0.0.1:6379/0); empty: one "
           "process, everything in its memory", check=lambda url: None if not url or url.startswith(
               ("redis://", "rediss://", "unix://")) else f"{url!r} is not a redis://, rediss:// or unix:// URL"),
    Option("REDIS_PREFIX", "parley", STRING,
           "prefix of every Redis key and channel Parley uses (several deployments can share one Redis)"),
    Option("REDIS_MAX_CONNECTIONS", 20000, NUMBER,
           "Redis connections a process may open (redis-py's async pool refuses the 101st by default)"),
    Option("PREPARED_FRAMES", True, BOOL,
           "frame each broadcast once and write the same bytes to every socket served by "
           "uvicorn's websockets-sansio (parley/realtime/uvicorn_writer.py); False: every frame through "
           "the ASGI send"),
    # /metrics (parley.health, docs/security.md "Metrics"): a token, or else an address check.
    Option("AVATAR_STORAGE", "default", STRING,
           "the alias in Django's STORAGES where avatars are kept (re-encoded PNGs): the "
           "filesystem by default, any django-storages backend in production"),
    Option("METRICS_TOKEN", "", STRING,
           "a secret that /metrics requires as `Authorization: Bearer <token>`, from any address; "
           "empty: no token, and only loopback and METRICS_ALLOWED_IPS may read /metrics"),
    Option("MAIL_NOTIFICATIONS", False, BOOL,
           "e-mail a mention or direct message to a user who is not online "
           "(parley.contrib.mail_notifications; Django's EMAIL_* settings)"),
    Option("METRICS_ALLOWED_IPS", (), STRINGS,
           "addresses or networks (`10.0.0.0/8`) besides loopback that may read /metrics when "
           "METRICS_TOKEN is empty", check=_networks_problem),
    # Uploads (docs/protocol.md §14): where files go, and what they may be (by their bytes).
    Option("UPLOADS_STORAGE", "default", STRING,
           "the alias in Django's STORAGES that uploads are saved to (any Storage: the filesystem, "
           "django-storages' S3 …); the standalone server's `default` is a folder under PARLEY_DATA_DIR"),
    Option("UPLOAD_CONTENT_TYPES", ("image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf",
                                    "text/plain", "application/zip", "application/gzip"), STRINGS,
           "the content types an upload may have, as Parley sniffs them from its bytes (never the "
           "client's claim); anything else is 415 unsupported_file_type"),
]


@functools.cache
def declared() -> dict[str, tuple[str, Any, Callable[[Any], str | None] | None]]:
    """key -> (kind, default, check), limits and options together. Imported on first use, not at
    import: parley.limits reads `parley_settings` from here."""
    from parley.limits import ALL as LIMITS

    keys: dict[str, tuple[str, Any, Callable[[Any], str | None] | None]] = {}
    for limit in LIMITS:
        keys[limit.key] = (NUMBER, limit.default, None)
    for option in OPTIONS:
        if option.key in keys:
            raise RuntimeError(f"parley.conf: {option.key} is declared twice")
        keys[option.key] = (option.kind, option.default, option.check)
    return keys


def _unknown(key: object, where: str) -> ImproperlyConfigured:
    probe = str(key).upper()
    if probe.startswith(ENV_PREFIX) and probe[len(ENV_PREFIX):] in declared():
        close = [probe[len(ENV_PREFIX):]]  # the environment variable's name, used as a key
    else:
        close = difflib.get_close_matches(probe, declared(), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ImproperlyConfigured(
        f"{where}: Parley has no setting {key!r}{hint} (README \"Configuration\" and "
        "docs/security.md list every key)")


def _checked(key: str, value: Any, where: str = "") -> Any:
    """`value` as Parley keeps it (lists as tuples), or ImproperlyConfigured naming the key."""
    kind, _default, check = declared()[key]
    where = where or f"PARLEY[{key!r}] = {value!r}"
    if kind == NUMBER:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ImproperlyConfigured(f"{where}: expected a number, got {type(value).__name__}")
        if value < 0:
            raise ImproperlyConfigured(f"{where}: expected a number >= 0")
    elif kind == BOOL:
        if not isinstance(value, bool):
            raise ImproperlyConfigured(f"{where}: expected True or False, got {type(value).__name__}")
    elif kind == STRING:
        if not isinstance(value, str):
            raise ImproperlyConfigured(f"{where}: expected a string, got {type(value).__name__}")
    elif kind == STRINGS:
        # A bare string is a sequence of strings too: "a,b" would reserve the slugs "a", ",", "b".
        if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset) \
                or not all(isinstance(item, str) for item in value):
            raise ImproperlyConfigured(f"{where}: expected a list of strings")
        value = tuple(value)
    if check is not None and (problem := check(value)):
        raise ImproperlyConfigured(f"{where}: {problem}")
    return value


def resolve(configured: object) -> dict[str, Any]:
    """Every key's value: the PARLEY dict `configured` (None: absent) over the defaults."""
    if configured is None:
        configured = {}
    if not isinstance(configured, Mapping):
        raise ImproperlyConfigured(
            f"PARLEY must be a dict of Parley's settings, not {type(configured).__name__}")
    keys = declared()
    values = {key: default for key, (_kind, default, _check) in keys.items()}
    for key, value in configured.items():
        if key not in keys:
            raise _unknown(key, "PARLEY")
        values[key] = _checked(key, value)
    return values


class ParleySettings:
    """The PARLEY setting over the defaults, as attributes; see the module docstring."""

    def __getattr__(self, name: str) -> Any:
        # Only reached for a name that is not an attribute: before the first load, or unknown.
        if name.startswith("__") or "_loaded" in self.__dict__:
            raise AttributeError(str(_unknown(name, "parley_settings")))
        self.reload()
        return getattr(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("parley_settings is read-only: set Django's PARLEY setting "
                             "(override_settings(PARLEY={...}) in a test)")

    def reload(self) -> None:
        """Read the PARLEY setting again. Every key is replaced at once (no key is ever missing),
        so a reader on another thread sees the old value or the new one."""
        self.__dict__.update(resolve(getattr(settings, "PARLEY", None)), _loaded=True)


parley_settings = ParleySettings()


def check_at_startup() -> None:
    """Load the PARLEY setting (ImproperlyConfigured if it is wrong), and refuse settings named
    like the environment variables (`PARLEY_MAX_FRAME_BYTES = 100` beside the dict): Parley
    does not read them, and a limit set that way would silently keep its default."""
    parley_settings.reload()
    for key in declared():
        if hasattr(settings, ENV_PREFIX + key):
            raise _loose_setting(ENV_PREFIX + key)


def _loose_setting(name: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(
        f"{name}: Parley reads its settings from one dict only, "
        f"PARLEY = {{{name[len(ENV_PREFIX):]!r}: ...}}")


def _reload_on_change(*, setting: str, enter: bool = True, **kwargs: Any) -> None:
    if setting == "PARLEY":
        parley_settings.reload()
    elif enter and setting.startswith(ENV_PREFIX) and setting[len(ENV_PREFIX):] in declared():
        # override_settings(PARLEY_MAX_TEXT_CHARS=5) would change nothing Parley reads.
        raise _loose_setting(setting)


setting_changed.connect(_reload_on_change, dispatch_uid="parley.conf.reload")


# --- the environment --------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parsed(name: str, kind: str, raw: str) -> Any:
    value = raw.strip()
    if kind == NUMBER:
        try:
            return int(value)
        except ValueError:
            pass
        try:
            return float(value)
        except ValueError:
            raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if kind == BOOL:
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false)")
    if kind == STRING:
        return value
    return [item.strip() for item in raw.split(",") if item.strip()]


def from_environ(environ: Mapping[str, str] | None = None, *, prefix: str = ENV_PREFIX) -> dict[str, Any]:
    """A PARLEY dict from the environment: `PARLEY_<KEY>` fills key `<KEY>` (numbers as numbers,
    booleans as 1/0 or true/false, lists comma-separated). Only the keys whose variable is set
    (and not blank) are in it, so the defaults stay declared in one place; other `PARLEY_...`
    variables (the standalone server's PARLEY_DATA_DIR and the like) are not Parley's keys."""
    environ = os.environ if environ is None else environ
    parley: dict[str, Any] = {}
    for key, (kind, _default, _check) in declared().items():
        raw = environ.get(prefix + key)
        if raw is None or (kind != STRINGS and raw.strip() == ""):
            continue
        value = _parsed(prefix + key, kind, raw)
        _checked(key, value, where=f"{prefix}{key}={raw!r}")  # named by its variable
        parley[key] = value
    return parley
