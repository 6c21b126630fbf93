"""CI runs a tiny subset of the benchmark scripts as smoke tests (their figures live in BENCHMARKS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize("script, args, expected", [
    ("bench_steer.py", ["--n", "2", "--rounds", "1"], "÷"),
    ("bench_steer_gate.py", ["--n", "1", "--rounds", "1"], "÷ four passes"),
    ("bench_generation.py", ["--n", "4", "--batch-size", "2"], "prompts/s"),
    ("bench_capture.py", ["--texts", "4", "--rounds", "1", "--rss-texts", "2"], "peak RSS during capture"),
    ("bench_serve.py", ["--n", "2", "--cost-n", "1", "--rounds", "1", "--clients", "1,2", "--threads", "1"], "÷ plain"),
    ("bench_kv.py", ["--length", "48", "--new-tokens", "3", "--ratios", "0.5", "--rounds", "1"], "÷ uncompressed"),
    ("kv_norm_stats.py", ["--models", "default", "--length", "64", "--prompts", "1"], "mean, global layers"),
    ("bundle_table.py", ["spare", "cad", "--relations", "capital"], "| cad | cad+gate |"),
])
def test_benchmark_script_runs(script, args, expected):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expected in proc.stdout, proc.stdout[-2000:]
