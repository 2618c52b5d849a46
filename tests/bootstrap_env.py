"""Loaded with `-p` (pyproject addopts) so it runs before pytest-django imports the settings."""

import os

# A developer's .env (config/env.py) must not redirect the suite to their database.
os.environ.setdefault("PARLEY_ENV_FILE", "")

# A fixed key rather than one generated into the data dir (config/env.py).
os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
os.environ.setdefault("PARLEY_DATA_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "var", "test"))
os.makedirs(os.environ["PARLEY_DATA_DIR"], exist_ok=True)

# Rate limits are tested on purpose by tests/test_limits.py (with override_parley); everywhere
# else a test sends as fast as it likes. Server subprocesses started by tests inherit these.
for _name in ("PARLEY_FRAMES_PER_SEC", "PARLEY_FRAMES_BURST", "PARLEY_MESSAGES_PER_SEC",
              "PARLEY_MESSAGES_BURST", "PARLEY_HANDSHAKES_PER_IP_PER_MIN",
              "PARLEY_HANDSHAKES_PER_USER_PER_MIN", "PARLEY_LOGIN_FAILURES_PER_IP_PER_HOUR",
              "PARLEY_SIGNUPS_PER_IP_PER_HOUR", "PARLEY_PASSWORD_RESETS_PER_IP_PER_HOUR",
              "PARLEY_PASSWORD_RESETS_PER_EMAIL_PER_HOUR",
              "PARLEY_ROOMS_CREATED_PER_USER_PER_HOUR", "PARLEY_MAX_ROOMS_OWNED_PER_USER",
              "PARLEY_EDITS_PER_SEC", "PARLEY_EDITS_BURST", "PARLEY_ROOM_MENTIONS_PER_HOUR",
              "PARLEY_SEARCHES_PER_MIN", "PARLEY_SEARCH_BURST",
              "PARLEY_DMS_CREATED_PER_USER_PER_HOUR", "PARLEY_USER_SEARCHES_PER_MIN",
              "AXES_FAILURE_LIMIT"):  # the standalone server's sign-in lockout (config/settings.py)
    os.environ.setdefault(_name, "100000")
os.environ.setdefault("PARLEY_MAX_SOCKETS_PER_USER", "10000")
