"""Hook overhead and early-stop speed-up on the default model (Gemma 3 270M; CPU unless --device).

Measured side by side in one process, interleaved round by round so that load from
other processes hits every variant alike; medians over rounds.

    python benchmarks/bench_hooks.py [--batch 8] [--seq 128] [--rounds 5] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sparekit.hooks import Hooks, Site
from sparekit.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layer", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    lm = load_model("default", device=args.device)
    ids = torch.randint(1000, 20000, (args.batch, args.seq), device=args.device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False, "logits_to_keep": 1}

    def bare():
        lm.model(**batch)

    def hooked():  # capture every layer's residual at the last token, full forward
        hooks = Hooks(lm)
        for layer in range(lm.info.n_layers):
            hooks.capture(Site(layer))
        with hooks:
            lm.model(**batch)

    def early_stop():  # capture the middle layer and stop there
        hooks = Hooks(lm).capture(Site(args.layer)).stop_after_captures()
        with hooks:
            lm.model(**batch)

    variants = {"bare": bare, "hooked": hooked, "early_stop": early_stop}
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        bare()  # warm-up
        for _ in range(args.rounds):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()  # kernels run asynchronously
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = args.batch * args.seq
    print(f"batch {args.batch}x{args.seq} tokens, {args.rounds} interleaved rounds, {args.device}, "
          f"{torch.get_num_threads()} threads")
    for name, t in med.items():
        print(f"  {name:10s} median {t:.3f} s  ({tokens / t:.0f} tok/s)")
    print(f"hooked / bare throughput (18 captures): {med['bare'] / med['hooked']:.3f}  (goal >= 0.97)")
    print(f"early stop at layer {args.layer} speed-up vs full forward: {med['bare'] / med['early_stop']:.2f}x")


if __name__ == "__main__":
    main()
