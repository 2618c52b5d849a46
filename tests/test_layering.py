"""The engine (parley.realtime) never imports the product app: dependencies point one way.

The engine may read its settings through parley.conf, its one config object; anything else of
parley — models, services, selectors, consumers — is the product, which registers what the
engine must call (the room-log watch, the credential check) instead of being imported by it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import parley.realtime

ENGINE = Path(parley.realtime.__file__).parent
ALLOWED = {"parley.conf"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, function-level and TYPE_CHECKING ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "parley":
                found += [(node.lineno, f"parley.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def test_the_engine_imports_nothing_of_the_product():
    wrong = [f"{path.name}:{line} imports {module}"
             for path in sorted(ENGINE.glob("*.py"))
             for line, module in _imports(path)
             if (module == "parley" or module.startswith("parley."))
             and not module.startswith("parley.realtime") and module not in ALLOWED]
    assert not wrong, "parley.realtime must not import the product app:\n" + "\n".join(wrong)


def test_the_engine_has_no_models():
    for path in ENGINE.glob("*.py"):
        assert "django.db.models" not in path.read_text(), path.name


def test_the_check_sees_a_product_import(tmp_path):
    """The rule itself can fail: a product import in an engine-shaped file is found."""
    probe = tmp_path / "probe.py"
    probe.write_text("from parley import services\nfrom parley.realtime import hub\nimport parley.models\n")
    assert [m for _, m in _imports(probe)] == ["parley.services", "parley.realtime", "parley.models"]
