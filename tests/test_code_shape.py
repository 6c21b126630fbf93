"""Code shape the project holds itself to (issue 26): no function in the package longer than 60 lines, and
no import inside a function outside ``cli/`` that does not say why (an optional dependency, or a heavy module
loaded late on purpose)."""

from __future__ import annotations

import ast
import io
import tokenize
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


def _comment_lines(text: str) -> set[int]:
    """The lines holding a comment (a ``#`` inside a string is not one)."""
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return {tok.start[0] for tok in tokens if tok.type == tokenize.COMMENT}


def _unexplained_imports(path: Path, root: Path = PACKAGE) -> list[str]:
    """Imports nested in a function with no comment on their lines or on the line above."""
    text = path.read_text(encoding="utf-8")
    lines, comments = text.splitlines(), _comment_lines(text)
    nested = sorted({node.lineno: node for fn in ast.walk(ast.parse(text))
                     if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) for node in ast.walk(fn)
                     if isinstance(node, (ast.Import, ast.ImportFrom))}.values(), key=lambda n: n.lineno)
    return [f"{path.relative_to(root)}:{node.lineno}: {lines[node.lineno - 1].strip()}" for node in nested
            if not comments & set(range(node.lineno - 1, node.end_lineno + 1))]


def test_every_import_inside_a_function_says_why():
    offenders = [line for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).parts[0] != "cli"
                 for line in _unexplained_imports(p)]
    assert not offenders, "move these imports to the module's top, or say why they wait (optional dependency, " \
                          f"deliberately lazy: …): {offenders}"


def test_the_import_check_sees_a_silent_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import json\n\n\ndef g():\n    # deliberately lazy: heavy\n    import torch\n"
                      "    import numpy  # as above\n\n    import os\n    x = '#'\n    import re\n")
    assert _unexplained_imports(sample, tmp_path) == ["sample.py:2: import json", "sample.py:10: import os",
                                                      "sample.py:12: import re"]


#: each concern of issue 26 and the one module that defines it (a second definition anywhere is a second copy)
ONE_DEFINITION = {
    "load": "saved.py",  # the one loader of saved folders (sparekit.load)
    "PromptBuilder": "data/formats.py",  # the one prompt builder
    "prompt_builder": "probes/detect.py",  # … with the request-time demonstrations
    "request_shots": "probes/detect.py",
    "read_states": "probes/reading.py",  # the one reading of gates and probes from last-token states
    "ProbeSet": "probes/reading.py",  # the one probe reader (ProbeSet.read)
    "edit_rows": "steering/base.py",  # the one row-scoped edit (Hooks.edit(rows=))
}


def _top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def test_each_concern_is_defined_once():
    where: dict[str, list[str]] = {name: [] for name in ONE_DEFINITION}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in _top_level_names(path) & set(ONE_DEFINITION):
            where[name].append(path.relative_to(PACKAGE).as_posix())
    assert where == {name: [module] for name, module in ONE_DEFINITION.items()}


def test_only_the_reading_step_asks_a_gate_to_fire():
    """A gate's decision is read in one place (``probes.reading.read_states``); everything else asks it."""
    callers = [f"{p.relative_to(PACKAGE)}:{i}" for p in sorted(PACKAGE.rglob("*.py"))
               for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
               if ".fire(" in line and not line.lstrip().startswith("def ")]
    assert callers and all(c.startswith("probes/reading.py:") for c in callers), callers
