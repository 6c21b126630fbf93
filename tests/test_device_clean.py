"""Device-clean code: nothing assumes the model or its activations live on the CPU.

A ``tensor.numpy()`` passes every CPU test and crashes on a GPU (the conflict gate did,
in ``bench steer --methods …,spare+gate``). The package converts through
``sparekit.utils.arrays.to_numpy`` only; this test finds any other ``.numpy()`` call.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sparekit

PACKAGE = Path(sparekit.__file__).parent
ALLOWED = {PACKAGE / "utils" / "arrays.py"}


def _numpy_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "numpy"]


def test_no_tensor_leaves_torch_without_going_to_the_cpu():
    offenders = [f"{path.relative_to(PACKAGE)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
                 if path not in ALLOWED for line in _numpy_calls(path)]
    assert not offenders, f"use sparekit.utils.arrays.to_numpy instead of .numpy() at {offenders}"


def test_the_check_sees_a_numpy_call(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import torch\nx = torch.zeros(2).numpy()\n")
    assert _numpy_calls(sample) == [2]


def test_to_numpy_detaches():
    import torch

    from sparekit.utils.arrays import to_numpy

    assert to_numpy(torch.arange(3.0, requires_grad=True) * 2).tolist() == [0.0, 2.0, 4.0]
