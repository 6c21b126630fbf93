"""Steered ÷ unsteered generation time on the default model, same prompts, same process.

Each steering method runs through its own ``steer`` context; rounds are interleaved and
the median is kept, so the ratio holds on a busy machine. Goal for SpARE: ≤ 1.05.
``spare+gate`` adds the shipped conflict gate, whose probe needs its own forward pass
up to the gate layer before generation (the edit changes the states the gate reads).

    python benchmarks/bench_steer.py --n 16 --rounds 3 --methods spare,spare+gate
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from sparekit.data import load_dataset
from sparekit.data.prompts import sample_demos
from sparekit.models import load_model
from sparekit.steering import SteeringPrompt, fitted_without_data
from sparekit.steering.fitted import FittedBundle, shipped_root


def timed(method, lm, prompts, toward, strength, gate=None) -> tuple[float, int]:
    """Seconds, and answer tokens generated (steering can make answers longer, which costs decode steps)."""
    start = time.perf_counter()
    with method.steer(lm, toward=toward, strength=strength, gate=gate) as steered:
        answers = steered.generate(prompts)
    seconds = time.perf_counter() - start
    return seconds, sum(len(lm.tokenizer(" " + a, add_special_tokens=False)["input_ids"]) for a in answers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default="spare,spare+gate",
                        help="shipped fitted methods to time; append +gate for the shipped conflict gate")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lm = load_model("default", device="cpu")
    data = load_dataset("default", limit=args.n + 40, seed=0)
    items, pool = data[:args.n], data[args.n:]
    prompts = [SteeringPrompt(ex, "sub", tuple(sample_demos(pool, ex.group, 3, "org_org", random.Random(i))))
               for i, ex in enumerate(items)]
    methods = {"none": (fitted_without_data("none"), None, None)}
    for label in args.methods.split(","):
        kind, _, gated = label.partition("+")
        bundle = FittedBundle.load(shipped_root(kind), lm.info.model_hash)
        methods[label] = (bundle["memory"].method, bundle["memory"].strength, bundle.require_gate() if gated else None)
    times: dict[str, list[float]] = {label: [] for label in methods}
    tokens: dict[str, int] = {}
    timed(methods["none"][0], lm, prompts[:2], "memory", None)  # warm-up
    for _ in range(args.rounds):
        for label, (method, strength, gate) in methods.items():
            seconds, tokens[label] = timed(method, lm, prompts, "memory", strength, gate)
            times[label].append(seconds)
    base = statistics.median(times["none"])
    print(f"{args.n} prompts, {args.rounds} interleaved rounds, median seconds; toward memory")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"{label:>10}: {median:7.2f} s   steered ÷ unsteered = {median / base:.3f}   "
              f"answer tokens {tokens[label]} ({tokens[label] / tokens['none']:.2f}× unsteered)")


if __name__ == "__main__":
    main()
