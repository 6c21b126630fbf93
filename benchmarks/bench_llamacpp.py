"""An exported control vector steering llama.cpp: does the GGUF move answers the asked way there too?

Exports a fitted ActAdd (``<run>/fitted/actadd``, one folder per direction) with
``export_control_vector``, loads the default model's own GGUF in llama-cpp-python, applies the
vector through llama.cpp's C API, and decodes greedily on conflict prompts of one relation:
EM toward memory and toward context per scale, beside the same prompts unsteered.

llama-cpp-python exposes llama.cpp's ``llama_set_adapter_cvec`` (``llama_apply_adapter_cvec`` before
llama.cpp renamed it) but not the GGUF loader of
``llama-cli`` (``common_control_vector_load``), so the file is read here with the ``gguf``
package and laid out the way that loader does: tensor ``direction.N`` at offset
``n_embd · (N - 1)`` of one flat buffer, layers 1 … n_layer - 1 (see
``sparekit.steering.control_vector`` for where the convention comes from). llama.cpp adds the
vector at every position; sparekit only at the last prompt token, hence the scale sweep.

    pip install llama-cpp-python   # compiles llama.cpp (about 10 minutes on 2 cores)
    python benchmarks/bench_llamacpp.py --method runs/loro1/held-out-capital/fitted/actadd \\
        --memorised runs/loro1/memorised.json --relation capital --n 30 --scales 0.25,0.5,1,2
"""

from __future__ import annotations

import argparse
import ctypes
import json
import tempfile
from pathlib import Path

import numpy as np

from sparekit.data import load_dataset
from sparekit.data.prompts import build_prompt, item_demos
from sparekit.evaluation.metrics import exact_match, uses_context
from sparekit.models.loading import _gemma3_gguf
from sparekit.steering import FittedBundle
from sparekit.steering.control_vector import export_control_vector, read_control_vector


def conflict_prompts(relation: str, memorised: Path, n: int, seed: int = 42, k_shot: int = 3):
    """``n`` memorised conflict items of ``relation`` and their 3-shot prompts (the harness's builder)."""
    data = load_dataset("default")
    keep = set(json.loads(memorised.read_text())["ids"])
    pool = data.subset([i for i, ex in enumerate(data) if ex.id in keep and ex.relation != relation])
    items = [ex for ex in data if ex.id in keep and ex.relation == relation][:n]
    return [(ex, build_prompt(ex, "sub", item_demos(ex, pool, seed, k_shot))) for ex in items]


def cvec_buffer(path: Path, n_embd: int, n_layer: int) -> np.ndarray:
    """The flat float32 buffer llama.cpp's loader builds from a control-vector GGUF."""
    vectors, _ = read_control_vector(path)
    buffer = np.zeros((n_layer - 1) * n_embd, dtype=np.float32)
    for layer, vector in vectors.items():
        buffer[(layer - 1) * n_embd:layer * n_embd] = vector.float().numpy()
    return buffer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", type=Path, required=True, help="a fitted actadd folder (memory/, context/)")
    parser.add_argument("--memorised", type=Path, required=True, help="memorised.json of the run")
    parser.add_argument("--relation", default="capital")
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--scales", default="0.25,0.5,1,2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import llama_cpp

    llm = llama_cpp.Llama(str(_gemma3_gguf()), n_ctx=1024, n_threads=args.threads, verbose=False, seed=0)
    n_embd, n_layer = llm.n_embd(), llama_cpp.llama_model_n_layer(llm.model)
    prompts = conflict_prompts(args.relation, args.memorised, args.n)

    apply_cvec = getattr(llama_cpp, "llama_set_adapter_cvec", None) or llama_cpp.llama_apply_adapter_cvec

    def answers(buffer: np.ndarray | None) -> list[str]:
        if buffer is None:
            code = apply_cvec(llm.ctx, None, 0, n_embd, 0, 0)
        else:
            data = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            code = apply_cvec(llm.ctx, data, buffer.size, n_embd, 1, n_layer - 1)
        if code != 0:
            raise SystemExit(f"setting the control vector returned {code}")
        out = []
        for _, text in prompts:
            llm.reset()
            result = llm(text, max_tokens=12, temperature=0.0, top_k=1, stop=["\n"], echo=False)
            out.append(result["choices"][0]["text"])
        return out

    def score(preds: list[str]) -> tuple[float, float]:
        memory = np.mean([exact_match(p, ex.org_answer) for p, (ex, _) in zip(preds, prompts)])
        context = np.mean([uses_context(p, ex) for p, (ex, _) in zip(preds, prompts)])
        return 100 * float(memory), 100 * float(context)

    rows = [("unsteered", "—", *score(answers(None)))]
    bundle = FittedBundle.load(args.method)
    with tempfile.TemporaryDirectory() as tmp:
        for toward in ("memory", "context"):
            method = bundle[toward].method
            tuned = {"strength": bundle[toward].strength}
            gguf = Path(tmp) / f"{toward}.gguf"
            export_control_vector(method, gguf, toward, float(tuned["strength"]))
            base = cvec_buffer(gguf, n_embd, n_layer)
            for scale in (float(s) for s in args.scales.split(",")):
                rows.append((f"→ {toward} (sparekit α {tuned['strength']})", scale, *score(answers(scale * base))))
    print(f"llama.cpp {llama_cpp.__version__}, {_gemma3_gguf().name}, {len(prompts)} {args.relation} conflicts")
    print("| vector | scale | EM → memory | EM → context |\n|---|---|---|---|")
    for name, scale, memory, context in rows:
        print(f"| {name} | {scale} | {memory:.1f} | {context:.1f} |")


if __name__ == "__main__":
    main()
