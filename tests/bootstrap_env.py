"""Loaded with `-p` (pyproject addopts) so it runs before pytest-django imports the settings."""

import os

# Production settings refuse to start without SECRET_KEY; tests are not production.
os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
os.environ.setdefault("PARLEY_DATA_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "var", "test"))
os.makedirs(os.environ["PARLEY_DATA_DIR"], exist_ok=True)
