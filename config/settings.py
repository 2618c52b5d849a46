"""Parley settings, all read from the environment (see README "Configuration" and .env.example).

Defaults give the embedded setup: an SQLite file and fan-out and presence in memory, so that
`scripts/serve` works on a fresh machine with nothing else running. DATABASE_URL and REDIS_URL
switch to PostgreSQL and Redis when one process is not enough.
"""

from datetime import timedelta
from pathlib import Path

import dj_database_url

from config.env import (
    data_dir,
    env_bool,
    env_int,
    env_list,
    env_str,
    generated_secret_key,
    load_dotenv,
)
from parley import logs as parley_logs
from parley.conf import from_environ as parley_from_environ
from parley.http_security import CSP_DIRECTIVES, CSP_EXCLUDED_PREFIXES

# The same .env for every entry point (the server, manage.py, scripts/serve); the environment wins.
load_dotenv()

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = data_dir()
DATA_DIR.mkdir(parents=True, exist_ok=True)  # the SQLite file and the generated key live here

DEBUG = env_bool("DEBUG", False)
# Unset: the key generated once into DATA_DIR/secret_key, which the server and manage.py share.
# A deployment with several machines sets SECRET_KEY itself (each machine would make its own).
SECRET_KEY = env_str("SECRET_KEY") or generated_secret_key(DATA_DIR)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
HOST = env_str("HOST", "127.0.0.1")
PORT = env_int("PORT", 8000)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "axes",  # failed sign-ins, in the database (AXES_* below)
    "csp",  # the Content-Security-Policy header (CONTENT_SECURITY_POLICY below)
    "parley",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "parley.http_security.SecurityHeadersMiddleware",  # Permissions-Policy
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "parley.http_auth.BearerTokenMiddleware",
    "parley.logs.RequestContextMiddleware",  # a request id (and a token's user id) for its log lines
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as axes asks: turns a sign-in that reached the lockout into config.auth's page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # The sign-in and sign-up pages are the standalone server's (a host has its own), so
        # their templates live here rather than in the parley package.
        "DIRS": [BASE_DIR / "config" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'parley.sqlite3'}",
        # Persistent connections: the consumers' database calls all run on one sync thread, and
        # Channels closes "old" connections around each call. With 0 every message paid for a
        # reconnect — and on SQLite a WAL checkpoint with fsync when the last connection closed
        # (measured: ~10 ms per send round trip, against ~1.5 ms with this).
        conn_max_age=env_int("PARLEY_DB_CONN_MAX_AGE_SECS", 600),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run beside the one writer; IMMEDIATE takes the write lock at BEGIN so two
    # concurrent sends queue on the lock (busy timeout) instead of failing with "database is
    # locked" when a read transaction tries to upgrade.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not :memory:, so the consumer's worker threads and the test share one database.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test-parley.sqlite3")}
elif env_str("PARLEY_TEST_DB_NAME"):
    # Lets several test runs share one PostgreSQL server without dropping each other's database.
    DATABASES["default"]["TEST"] = {"NAME": env_str("PARLEY_TEST_DB_NAME")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis ----------------------------------------------------------------------------------
# Unset: one process, presence and fan-out in memory. Set: presence shared in Redis and fan-out
# across processes through its pub/sub (parley.realtime.hub). Parley needs no channel layer.
# REDIS_URL fills PARLEY["REDIS_URL"] below; PARLEY_REDIS_PREFIX and PARLEY_REDIS_MAX_CONNECTIONS
# fill their keys as every PARLEY_<KEY> does.
_redis_url = env_str("REDIS_URL")  # (not a setting of its own: PARLEY["REDIS_URL"] is the one)

# --- Auth, sessions, security ---------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
    # The sign-up form keeps a password's spaces (strip=False), so eight spaces passed the
    # length check.
    {"NAME": "parley.passwords.NonSpaceLengthValidator", "OPTIONS": {"min_length": 8}},
]
# Axes's lockout check first; then Django's password check, which also tells the sign-in form
# about a disabled account's right password and ends every sign-in (parley/auth_backends.py).
# Django's own ModelBackend is never asked to sign anyone in: it is listed because a session
# names the backend that signed it in, and those signed in before this list (or by a process
# not yet upgraded) name it; unlisted, they would all be signed out.
AUTHENTICATION_BACKENDS = [
    "config.auth.SignInGuard",
    "parley.auth_backends.DisabledAccountAwareBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Failed sign-ins (/accounts/login/ and /admin/login/) are counted by django-axes per pair of
# username and client address, in the database, so every process sees the same count. Per
# pair, not per username: a stranger failing on purpose locks the victim's name out from the
# stranger's address only, never from the victim's. One address trying many usernames is
# PARLEY_LOGIN_FAILURES_PER_IP_PER_HOUR's (parley/throttles.py). The pair's failures within the
# cool-off count; the one that reaches the limit, and every try during the lockout (right
# password included, and each restarts the cool-off), gets config.auth's 429 page. A successful
# sign-in clears its pair. `manage.py axes_reset_username NAME` lifts a lockout early.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429
AXES_LOCKOUT_CALLABLE = "config.auth.lockout_response"
# REMOTE_ADDR, which uvicorn has already set from X-Forwarded-For when the peer is a trusted
# proxy (--proxy-headers --forwarded-allow-ips): axes must not read that header itself, or a
# client could name any address it likes.
AXES_CLIENT_IP_CALLABLE = "config.auth.client_ip"
AXES_DISABLE_ACCESS_LOG = True  # successful sign-ins are not recorded (only failures are needed)

# Password reset mails (/accounts/password_reset/). Without EMAIL_HOST they are printed on the
# server's standard output (so scripts/serve works with no mail server; the link in them is a
# credential: a production server sets EMAIL_HOST).
EMAIL_HOST = env_str("EMAIL_HOST")
EMAIL_BACKEND = env_str("EMAIL_BACKEND") or (
    "django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend")
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)  # STARTTLS, as on port 587
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)  # TLS from the start, as on port 465
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT_SECS", 10)  # s; a reset request waits for the mail server
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Parley <parley@localhost>")
PASSWORD_RESET_TIMEOUT = env_int("PASSWORD_RESET_TIMEOUT_SECS", 3600)  # s a reset link stays valid

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "parley:app"
LOGOUT_REDIRECT_URL = "login"
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
CSRF_FAILURE_VIEW = "parley.views.csrf_failure"  # JSON 403 on the API, Django's page elsewhere
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)  # set (e.g. 31536000) once TLS is permanent
# Parley's policy (parley/http_security.py), nonce-free: its pages have no inline script.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": CSP_DIRECTIVES,
    "EXCLUDE_URL_PREFIXES": CSP_EXCLUDED_PREFIXES,
}

# --- I18N, static ---------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# WhiteNoise serves straight from the apps (finders), so no collectstatic step is needed to run.
# Set STATIC_ROOT and run collectstatic to serve compressed, hashed files instead.
STATIC_ROOT = env_str("STATIC_ROOT") or None
WHITENOISE_USE_FINDERS = True

# --- Uploads (docs/protocol.md §14) ------------------------------------------------------------
# Files (and avatars: AVATAR_STORAGE) go through Django's storage API to the alias PARLEY's
# UPLOADS_STORAGE names ("default"):
# here a folder under the data directory, never served as static files (parley.upload_views
# serves each to whoever may see its room). docs/deploy.md: S3 and the like via django-storages.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                "OPTIONS": {"location": env_str("UPLOADS_DIR") or str(DATA_DIR / "uploads")}},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# An upload above this many bytes is spooled to a temporary file while the request is read, not
# held in memory (Django's default, said here because uploads are why it matters).
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

# --- Parley ----------------------------------------------------------------------------------
# This server is one host project among others: it configures Parley with the PARLEY dict
# (parley/conf.py; README "Configuration"), filled from the environment: PARLEY_<KEY> sets key
# <KEY>, e.g. PARLEY_MAX_SOCKETS_PER_USER=10 or PARLEY_RESERVED_SLUGS=admin,api. Keys left unset
# keep the defaults declared in parley/limits.py and parley/conf.py; a bad value stops the start.
PARLEY = parley_from_environ()
if _redis_url:
    PARLEY["REDIS_URL"] = _redis_url

# Plain text by default; LOG_FORMAT=json: one JSON object per line (parley/logs.py, with the
# socket or request id of each record and secrets redacted). config/serve.py gives uvicorn's own
# loggers the same format.
LOG_FORMAT = env_str("LOG_FORMAT", "plain").lower()
LOGGING = parley_logs.logging_config(json=LOG_FORMAT == "json", level=env_str("LOG_LEVEL", "INFO"))
