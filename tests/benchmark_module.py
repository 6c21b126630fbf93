"""Import a script of benchmarks/ as a module for a test, and undo it afterwards."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_module(name: str) -> Iterator[ModuleType]:
    """Yield ``benchmarks/<name>.py`` loaded as module ``name`` (a fixture body: ``yield from``).

    The folder goes on ``sys.path`` because scripts import their sibling scripts by name, and the module is
    registered in ``sys.modules`` because dataclasses resolve their annotations through it.
    """
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(BENCHMARKS))
