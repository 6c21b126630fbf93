"""CI runs a tiny subset of the benchmark scripts as smoke tests (their figures live in BENCHMARKS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize("script, args", [
    ("bench_steer.py", ["--n", "2", "--rounds", "1"]),
    ("bench_generation.py", ["--n", "4", "--batch-size", "2"]),
])
def test_benchmark_script_runs(script, args):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "÷" in proc.stdout or "×" in proc.stdout or "prompts/s" in proc.stdout
