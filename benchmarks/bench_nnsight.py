"""The same capture job through sparekit and through nnsight 0.8 (`pip install sparekit[nnsight]`).

Job: the last token's residual stream after block L for N NQ-Swap prompts, kept as float16
(sparekit writes its sharded store; nnsight's saved tensors are stacked and written as one
safetensors file, the least a user must do to keep them). Both run on the same loaded model,
the same tokenisation and length-sorted batches of the same size; interleaved rounds, medians.
Variants: ``sparekit.capture_activations`` (stops the forward after block L), nnsight
``trace(...)`` with ``.save()`` (the documented recipe, whole forward), and nnsight with
``tracer.stop()`` after the save (its own early exit). The captured values are compared.

    python benchmarks/bench_nnsight.py [--texts 64] [--layer 9] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from sparekit.activations import ActivationStore, capture_activations
from sparekit.data import load_dataset
from sparekit.hooks import Site
from sparekit.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--layer", type=int, default=9, help="block whose output is captured (mid-depth of 18)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    try:
        from nnsight import NNsight
    except ImportError:
        raise SystemExit("nnsight is not installed: pip install 'sparekit[nnsight]'") from None

    lm = load_model("default", device="cpu")
    texts = [f"context: {ex.org_context}\nquestion: {ex.question}\nanswer:"
             for ex in load_dataset("nqswap", limit=args.texts, seed=0)]
    enc = lm.tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))  # sparekit's batching, reproduced for nnsight
    batches = [lm.tokenizer.pad({"input_ids": [enc[i] for i in order[s:s + args.batch]]}, return_tensors="pt")
               for s in range(0, len(order), args.batch)]
    n_tokens = sum(len(x) for x in enc)
    wrapped = NNsight(lm.model)
    layer = args.layer

    def nnsight_job(stop: bool, out: Path) -> torch.Tensor:
        rows = []
        for batch in batches:
            with wrapped.trace(**batch, use_cache=False) as tracer:
                hidden = wrapped.model.layers[layer].output
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
                saved = hidden[:, -1].to(torch.float16).save()  # left padding: -1 is each row's last token
                if stop:
                    tracer.stop()
            rows.append(saved)
        stacked = torch.cat(rows)
        restored = torch.empty_like(stacked)
        restored[torch.tensor(order)] = stacked  # back to text order, as the store keeps it
        save_file({"h": restored}, str(out / "h.safetensors"))
        return restored

    def sparekit_job(out: Path) -> torch.Tensor:
        capture_activations(lm, texts, [Site(layer)], out / "store", batch_size=args.batch,
                            max_length=args.max_length, progress=False)
        return ActivationStore(out / "store").load(Site(layer))

    variants = {"sparekit": sparekit_job, "nnsight": lambda out: nnsight_job(False, out),
                "nnsight+stop": lambda out: nnsight_job(True, out)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    results: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for name, job in variants.items():  # warm-up, and the values compared below
            with tempfile.TemporaryDirectory() as tmp:
                results[name] = job(Path(tmp))
        for _ in range(args.rounds):
            for name, job in variants.items():
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    job(Path(tmp))
                    times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    diff = max((results[k].float() - results["sparekit"].float()).abs().max().item() for k in ("nnsight", "nnsight+stop"))
    print(f"{len(texts)} texts, {n_tokens} tokens, block {layer} of {lm.info.n_layers}, batch {args.batch}, "
          f"{args.rounds} interleaved rounds, {torch.get_num_threads()} threads")
    for name, t in med.items():
        print(f"  {name:13s} median {t:.2f} s  ({n_tokens / t:.0f} tok/s)")
    print(f"max |sparekit - nnsight| over captured values: {diff:.3g}")
    print(f"sparekit / nnsight throughput: {med['nnsight'] / med['sparekit']:.2f}x  (goal >= 4.5x); "
          f"/ nnsight with tracer.stop(): {med['nnsight+stop'] / med['sparekit']:.2f}x")


if __name__ == "__main__":
    main()
