"""The PARLEY settings dict (parley/conf.py): defaults, refusals at startup, overrides, and the
standalone server filling it from the environment (config/settings.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from parley import conf, limits, protocol
from tests.conftest import make_user, override_parley

ROOT = Path(__file__).resolve().parent.parent


def python(code: str, tmp_path: Path, env: dict[str, str] | None = None,
           settings_module: str = "config.settings") -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter after django.setup(), as a server process starts: the
    environment without the suite's PARLEY_* variables (tests/bootstrap_env.py), plus `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "DJANGO_"))
             and k not in ("DATABASE_URL", "REDIS_URL")}
    clean.update({"PARLEY_ENV_FILE": "", "PARLEY_DATA_DIR": str(tmp_path / "data"),
                  "SECRET_KEY": "test-only", "DJANGO_SETTINGS_MODULE": settings_module,
                  "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])})
    clean.update(env or {})
    script = "import django\ndjango.setup()\n" + code
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=clean, capture_output=True,
                          text=True, timeout=60)


# --- defaults and reads --------------------------------------------------------------------------

def test_no_parley_dict_means_every_default():
    values = conf.resolve(None)  # what parley_settings holds when settings have no PARLEY
    assert values == conf.resolve({})
    for limit in limits.ALL:
        assert values[limit.key] == limit.default, limit.key
    for option in conf.OPTIONS:
        assert values[option.key] == option.default, option.key


def test_parley_settings_is_read_only():
    with pytest.raises(AttributeError, match="read-only"):
        conf.parley_settings.MAX_TEXT_CHARS = 5  # type: ignore[misc]


def test_an_unknown_name_read_in_code_is_named_with_close_matches():
    with pytest.raises(AttributeError, match="'MAX_SOCKETS_PER_USER'"):
        conf.parley_settings.MAX_SOCKET_PER_USER  # noqa: B018


def test_every_option_is_documented_with_its_default_in_the_readme():
    """Limits are docs/security.md's table (tests/test_security.py); the other keys README's."""
    readme = (ROOT / "README.md").read_text()
    missing = [option.key for option in conf.OPTIONS if f"| `{option.key}` |" not in readme]
    assert missing == []


# --- refusals --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "suggested"), [
    ("MAX_SOCKET_PER_USER", "'MAX_SOCKETS_PER_USER'"),
    ("max_frame_bytes", "'MAX_FRAME_BYTES'"),  # keys are upper case, like Django's settings
    ("PARLEY_RESERVED_SLUGS", "'RESERVED_SLUGS'"),  # the environment variable's name
])
def test_an_unknown_key_is_refused_naming_it_and_the_close_matches(key, suggested):
    with pytest.raises(ImproperlyConfigured) as caught:
        conf.resolve({key: 10})
    assert f"PARLEY: Parley has no setting {key!r}; did you mean {suggested}" in str(caught.value)


@pytest.mark.parametrize(("parley", "message"), [
    ({"MAX_FRAME_BYTES": "64k"}, "PARLEY['MAX_FRAME_BYTES'] = '64k': expected a number, got str"),
    ({"MAX_ROOMS_PER_SOCKET": True}, "PARLEY['MAX_ROOMS_PER_SOCKET'] = True: expected a number, got bool"),
    ({"MAX_ROOMS_PER_SOCKET": -1}, "PARLEY['MAX_ROOMS_PER_SOCKET'] = -1: expected a number >= 0"),
    ({"PREPARED_FRAMES": "no"}, "PARLEY['PREPARED_FRAMES'] = 'no': expected True or False, got str"),
    ({"RESERVED_SLUGS": "admin,api"}, "PARLEY['RESERVED_SLUGS'] = 'admin,api': expected a list of strings"),
    ({"RESERVED_SLUGS": ["admin", 7]}, "expected a list of strings"),
    ({"ALLOWED_ORIGINS": ["chat.example.com"]},
     "'chat.example.com' is not an origin like https://chat.example.com"),
    (["MAX_FRAME_BYTES"], "PARLEY must be a dict of Parley's settings, not list"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(parley, message):
    with pytest.raises(ImproperlyConfigured) as caught:
        conf.resolve(parley)
    assert message in str(caught.value)


def test_a_bad_override_is_refused_and_the_settings_in_force_stay():
    before = conf.parley_settings.MAX_TEXT_CHARS
    with pytest.raises(ImproperlyConfigured, match="MAX_TEXT_CHAR"), \
            override_settings(PARLEY={"MAX_TEXT_CHAR": 5}):
        pass  # pragma: no cover (entering refuses)
    assert conf.parley_settings.MAX_TEXT_CHARS == before


def test_overriding_a_setting_named_like_the_variable_is_refused():
    """override_settings(PARLEY_X=...) would change nothing Parley reads: it fails instead."""
    with pytest.raises(ImproperlyConfigured, match=r"PARLEY = \{'MAX_TEXT_CHARS': \.\.\.\}"), \
            override_settings(PARLEY_MAX_TEXT_CHARS=5):
        pass  # pragma: no cover (entering refuses)


def test_a_host_project_with_an_unknown_key_does_not_start(tmp_path):
    """ParleyConfig.ready checks the dict: django.setup() fails, before any socket reads it."""
    (tmp_path / "host_settings.py").write_text(
        "from config.settings import *  # noqa: F403\n"
        "PARLEY = {'MAX_SOCKETS_PER_USER': 10, 'RESERVED_SLUG': ['admin']}\n")
    started = python("print('started')", tmp_path, settings_module="host_settings")
    assert started.returncode != 0 and "started" not in started.stdout
    assert "ImproperlyConfigured" in started.stderr
    assert "'RESERVED_SLUG'; did you mean 'RESERVED_SLUGS'" in started.stderr, started.stderr


def test_a_host_project_setting_a_limit_outside_the_dict_does_not_start(tmp_path):
    """`PARLEY_MAX_FRAME_BYTES = 100` beside the dict would silently keep the default: refused."""
    (tmp_path / "loose_settings.py").write_text(
        "from config.settings import *  # noqa: F403\n"
        "PARLEY_MAX_FRAME_BYTES = 100\n")
    started = python("print('started')", tmp_path, settings_module="loose_settings")
    assert started.returncode != 0 and "started" not in started.stdout
    assert ("PARLEY_MAX_FRAME_BYTES: Parley reads its settings from one dict only, "
            "PARLEY = {'MAX_FRAME_BYTES': ...}") in started.stderr, started.stderr


# --- overrides take effect --------------------------------------------------------------------------

def test_override_settings_takes_effect_and_is_undone():
    default = conf.parley_settings.MAX_TEXT_CHARS
    with override_settings(PARLEY={"MAX_TEXT_CHARS": 5, "RESERVED_SLUGS": ["admin"]}):
        assert conf.parley_settings.MAX_TEXT_CHARS == 5
        assert conf.parley_settings.RESERVED_SLUGS == ("admin",)
        assert limits.MAX_TEXT_CHARS.value == 5
        with pytest.raises(protocol.ProtocolError) as caught:
            protocol.parse_command({"type": "send", "room": "r", "text": "123456"})
        assert caught.value.code == "text_too_long"
    assert conf.parley_settings.MAX_TEXT_CHARS == default
    assert conf.parley_settings.RESERVED_SLUGS == ()


def test_pytest_djangos_settings_fixture_takes_effect(settings):
    settings.PARLEY = {"HISTORY_PAGE_DEFAULT": 7}
    assert protocol.page_limit(None) == 7


@pytest.mark.django_db(transaction=True)
@override_parley(MAX_ROOMS_PER_SOCKET=3, TYPING_MIN_INTERVAL_MS=250)
async def test_an_override_reaches_a_live_socket(connect):
    """Through the real ASGI application: the hello frame reports the limits in force."""
    client = await connect(await make_user("ada"))
    assert client.hello["limits"]["max_rooms"] == 3
    assert client.hello["limits"]["typing_interval_ms"] == 250
    # override_parley keeps the other keys of the suite's dict (its raised rate limits).
    assert client.hello["limits"]["messages_per_sec"] == 100000


# --- the environment (the standalone server) --------------------------------------------------------

def test_environment_variables_fill_the_dict_in_config_settings(tmp_path):
    shown = python(
        "import json\n"
        "from django.conf import settings\n"
        "from parley.conf import parley_settings as p\n"
        "print(json.dumps([settings.PARLEY, p.MAX_SOCKETS_PER_USER, p.MAX_TEXT_CHARS]))\n",
        tmp_path,
        env={"PARLEY_MAX_SOCKETS_PER_USER": "7", "PARLEY_CLOSE_GRACE_SECS": "0.5",
             "PARLEY_RESERVED_SLUGS": "admin, api", "PARLEY_PREPARED_FRAMES": "0",
             "PARLEY_ALLOWED_ORIGINS": "https://chat.example.com",
             "PARLEY_HISTORY_PAGE_DEFAULT": "",  # blank: unset, as before
             "PARLEY_LISTEN_BACKLOG": "128"})  # the launcher's, not a key: ignored here
    assert shown.returncode == 0, shown.stderr
    parley, sockets, chars = json.loads(shown.stdout.splitlines()[-1])
    assert parley == {"MAX_SOCKETS_PER_USER": 7, "CLOSE_GRACE_SECS": 0.5,
                      "RESERVED_SLUGS": ["admin", "api"], "PREPARED_FRAMES": False,
                      "ALLOWED_ORIGINS": ["https://chat.example.com"]}
    assert (sockets, chars) == (7, limits.MAX_TEXT_CHARS.default)


@pytest.mark.parametrize(("name", "raw", "message"), [
    ("PARLEY_MAX_FRAME_BYTES", "lots", "PARLEY_MAX_FRAME_BYTES='lots' is not a number"),
    ("PARLEY_PREPARED_FRAMES", "maybe", "PARLEY_PREPARED_FRAMES='maybe' is not a boolean"),
    ("PARLEY_ALLOWED_ORIGINS", "chat.example.com",
     "PARLEY_ALLOWED_ORIGINS='chat.example.com': 'chat.example.com' is not an origin"),
    ("PARLEY_MAX_CONNECTIONS", "-1", "PARLEY_MAX_CONNECTIONS='-1': expected a number >= 0"),
])
def test_a_bad_environment_variable_is_refused_naming_it(name, raw, message):
    with pytest.raises(ImproperlyConfigured) as caught:
        conf.from_environ({name: raw})
    assert message in str(caught.value)
