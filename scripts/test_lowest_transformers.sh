#!/usr/bin/env bash
# Runs the stack-sensitive tests (hooks, fingerprint, generation, steering conformance) on the
# LOWEST transformers release pyproject.toml allows, in a virtual environment that sees the main
# one's packages (sparekit, torch, ...) but holds its own transformers. The main test command
# covers the newest release, which a fresh install resolves.
#   bash scripts/test_lowest_transformers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
low=$("$PY" -c "from sparekit.models.loading import SUPPORTED_TRANSFORMERS as r; print(r.split(',')[0].removeprefix('>='))")
venv=${SPAREKIT_LOW_VENV:-${TMPDIR:-/tmp}/sparekit-transformers-$low}
[[ -x "$venv/bin/python" ]] || "$PY" -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install -q "transformers==$low.*"
"$venv/bin/python" -c "import transformers; print('lowest allowed transformers:', transformers.__version__)"
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_hooks.py tests/test_fingerprint.py \
  tests/test_generation.py tests/test_steering_baselines.py tests/test_spare.py tests/test_gate.py tests/test_models.py \
  tests/test_read_then_steer.py "tests/test_serve.py::test_shared_prefix_is_computed_once_and_answers_stay_the_same"
