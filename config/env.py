"""Reading settings from the environment, with one error message style for bad values; the .env
file and the generated secret key that every entry point shares."""

import os
import secrets
import time
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false)")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# --- .env and the generated secret key: shared by manage.py, the server and scripts/serve ----

BASE_DIR = Path(__file__).resolve().parent.parent


def env_file() -> Path | None:
    """The .env file this checkout reads: PARLEY_ENV_FILE if set (empty: none), else <repo>/.env."""
    raw = os.environ.get("PARLEY_ENV_FILE")
    if raw is None:
        return BASE_DIR / ".env"
    return Path(raw) if raw.strip() else None


def load_dotenv() -> Path | None:
    """Put the .env file's variables into os.environ; a variable already set in the environment
    wins. Every entry point calls this before reading settings (config/settings.py does), so
    `manage.py create_token` sees the DATABASE_URL the server sees. Returns the file read."""
    path = env_file()
    if path is None or not path.is_file():
        return None
    from dotenv import dotenv_values

    for name, value in dotenv_values(path).items():
        if value is not None:
            os.environ.setdefault(name, value)
    return path


def data_dir() -> Path:
    return Path(env_str("PARLEY_DATA_DIR", str(BASE_DIR / "var")))


def generated_secret_key(directory: Path) -> str:
    """The key in `<data dir>/secret_key`, made once (mode 600) by whichever entry point needs it
    first: sessions survive restarts, and manage.py signs with the key the server uses."""
    key_file = directory / "secret_key"
    try:
        return _read_or_make_key(directory, key_file)
    except OSError as exc:
        raise ImproperlyConfigured(
            f"SECRET_KEY is not set and {key_file} cannot be read or made ({exc}); set SECRET_KEY"
        ) from exc


def _read_or_make_key(directory: Path, key_file: Path) -> str:
    try:
        key = key_file.read_text().strip()
    except FileNotFoundError:
        key = ""
    if key:
        return key
    directory.mkdir(parents=True, exist_ok=True)
    new = secrets.token_urlsafe(50)
    try:
        # O_EXCL: two processes starting at once (a server and manage.py) must agree on one key.
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # the other process is writing it
            key = key_file.read_text().strip()
            if key:
                return key
            time.sleep(0.02)
        raise ImproperlyConfigured(f"{key_file} is empty: delete it or set SECRET_KEY") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(new + "\n")
    return new
