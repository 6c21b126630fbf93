#!/usr/bin/env bash
# Installs sparekit and everything it needs into the current Python environment.
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh --dev    # runtime + test tools (+ Debian's chromium for the playground test)
# An existing torch 2.6+ is left alone; without one (or with an older one, which transformers 5 turns
# off) we install torch 2.13.0, which on CPU-only machines resolves to the CPU build (never a multi-GB
# CUDA download).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"
if ! "$PY" -c "import sys, torch; sys.exit(tuple(map(int, torch.__version__.split('.')[:2])) < (2, 6))" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".${extras}"
# The playground test drives a real headless Chromium: install Debian's when missing.
if [[ "${1:-}" == "--dev" ]] && ! { command -v chromium && command -v chromedriver; } >/dev/null; then
  SUDO=""; [[ $(id -u) == 0 ]] || SUDO="sudo -n"
  if command -v apt-get >/dev/null && { [[ -z "$SUDO" ]] || command -v sudo >/dev/null; }; then
    { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
        chromium chromium-driver; } >/dev/null \
      || echo "setup: could not apt-get install chromium; the playground test will be skipped" >&2
  else
    echo "setup: chromium + chromium-driver missing and no apt-get (or no root); the playground test will be skipped" >&2
  fi
fi
