"""Test support shared by test modules: real server subprocesses (server.py) and the Python client.

Importing this package makes `parley_client` (clients/python) importable; nothing else changes.
"""

import sys
from pathlib import Path

_CLIENT = str(Path(__file__).resolve().parents[2] / "clients" / "python")
if _CLIENT not in sys.path:
    sys.path.insert(0, _CLIENT)
