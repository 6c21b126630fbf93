#!/usr/bin/env bash
# Builds the virtual environment benchmarks/bench_kvpress.py runs NVIDIA kvpress in: kvpress 0.5.5
# pins transformers < 5.3, which sparekit's own environment does not hold, so it lives apart.
#   bash scripts/kvpress_env.sh            # -> .venv-kvpress (git-ignored); KVPRESS_VENV=DIR to move it
# torch 2.13.0 resolves to the CPU build on CPU-only machines (no CUDA download).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
venv=${KVPRESS_VENV:-.venv-kvpress}
[[ -x "$venv/bin/python" ]] || "$PY" -m venv "$venv"
"$venv/bin/python" -m pip install -q "torch==2.13.0"
"$venv/bin/python" -m pip install -q "kvpress==0.5.5"
"$venv/bin/python" -c "from importlib.metadata import version as v; print('kvpress environment:', *(f'{p} {v(p)}' for p in ('kvpress', 'transformers', 'torch')))"
