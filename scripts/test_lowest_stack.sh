#!/usr/bin/env bash
# Runs the stack-sensitive tests (hooks, fingerprint, generation, steering conformance) on the LOWEST
# torch and transformers releases pyproject.toml allows, in a virtual environment that sees the main
# one's packages (sparekit, numpy, ...) but holds its own torch and transformers. The main test command
# covers the newest releases, which a fresh install resolves.
#   bash scripts/test_lowest_stack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# The lower bounds as the installed sparekit declares them, e.g. "torch==2.6.* transformers==5.23.*".
pins=$("$PY" - <<'PYEOF'
from importlib.metadata import requires
from packaging.requirements import Requirement
for req in map(Requirement, requires("sparekit")):
    if req.name in ("torch", "transformers") and req.marker is None:
        low = next(s.version for s in req.specifier if s.operator == ">=")
        print(f"{req.name}=={low}.*", end=" ")
PYEOF
)
venv=${SPAREKIT_LOW_VENV:-${TMPDIR:-/tmp}/sparekit-lowest-${pins// /_}}
[[ -x "$venv/bin/python" ]] || "$PY" -m venv --system-site-packages "$venv"
# shellcheck disable=SC2086  # two pins, split on purpose
"$venv/bin/python" -m pip install -q $pins
"$venv/bin/python" -c "import torch, transformers; print('lowest allowed: torch', torch.__version__, \
'/ transformers', transformers.__version__); assert transformers.utils.is_torch_available()"
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_hooks.py tests/test_fingerprint.py \
  tests/test_generation.py tests/test_steering_baselines.py tests/test_spare.py tests/test_gate.py tests/test_models.py \
  tests/test_read_then_steer.py "tests/test_serve.py::test_shared_prefix_is_computed_once_and_answers_stay_the_same"
