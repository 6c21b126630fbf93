"""Code shape the project holds itself to (issue 26): no function in the package longer than 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import sparekit

PACKAGE = Path(sparekit.__file__).parent
MAX_LINES = 60


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_LINES]


def test_no_function_is_longer_than_60_lines():
    offenders = {str(p.relative_to(PACKAGE)): found for p in sorted(PACKAGE.rglob("*.py"))
                 if (found := _long_functions(p))}
    assert not offenders, f"split these functions below {MAX_LINES} lines: {offenders}"


def test_the_check_sees_a_long_function(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n" + "    x = 1\n" * MAX_LINES)
    assert _long_functions(sample) == [f"f ({MAX_LINES + 1} lines)"]
