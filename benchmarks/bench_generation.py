"""Greedy generation throughput on the default model: batched (left padding) vs one prompt at a time.

Both runs use the same prompts (3-shot, with the conflicting context, from the default
dataset) in the same process, so the ratio is meaningful even on a busy machine.

    python benchmarks/bench_generation.py --n 32 --batch-size 8
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from sparekit.data import load_dataset
from sparekit.data.prompts import build_prompt, sample_demos
from sparekit.evaluation.generation import greedy_generate
from sparekit.models import load_model


def run(lm, prompts: list[str], batch_size: int) -> tuple[float, int, list[str]]:
    start = time.perf_counter()
    outputs = greedy_generate(lm, prompts, batch_size=batch_size)
    seconds = time.perf_counter() - start
    tokens = sum(len(lm.tokenizer(o, add_special_tokens=False).input_ids) for o in outputs)
    return seconds, tokens, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="number of prompts")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lm = load_model("default", device="cpu")
    data = load_dataset("default", limit=args.n, seed=0)
    rng = random.Random(0)
    prompts = [build_prompt(ex, "sub", sample_demos(data, ex.group, 3, "org_org", rng)) for ex in data]
    greedy_generate(lm, prompts[:2], batch_size=2)  # warm-up

    rows = {}
    for label, bs in (("one-by-one", 1), (f"batched ({args.batch_size})", args.batch_size)):
        seconds, tokens, outputs = run(lm, prompts, bs)
        rows[label] = (seconds, tokens, outputs)
        print(f"{label:<14} {len(prompts) / seconds:7.2f} prompts/s  {tokens / seconds:7.2f} answer tokens/s  "
              f"({seconds:.1f} s, {tokens} tokens)")
    (t1, _, out1), (tb, _, outb) = rows.values()
    print(f"speed-up batched / one-by-one: {t1 / tb:.2f}x; identical outputs: {out1 == outb}")


if __name__ == "__main__":
    main()
