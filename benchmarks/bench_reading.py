"""What the default reading costs: ``steer`` and ``detect`` with ``--detector auto`` (recall, the default where the
question and context are known) ÷ the same with ``--detector probe``, same questions, same process.

The probe is read off the unsteered answer's own prompt pass (free in ``steer``; one pass stopped at the probe layer
in ``detect``); recall adds one short closed-book generation of two prompts and one prompt pass for its source
reading. Its answers are kept per question, so a repeated question ("cached") costs only that pass: both are
timed. Rounds are interleaved and medians kept, so the ratio holds on a busy machine.

    python benchmarks/bench_reading.py --n 12 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict

import torch

from sparekit.data import load_dataset
from sparekit.models import load_model
from sparekit.probes import training_free
from sparekit.probes.detect import detect, probes_for, prompt_builder
from sparekit.steering.question import steer_question


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("default", device="cpu")
    probes = probes_for(lm)
    builder = prompt_builder(lm, probes.folder)
    items = list(load_dataset("default", limit=args.n, seed=1))
    surfaces = {
        "steer": lambda ex, d: steer_question(lm, ex.sub_context, ex.question, "memory", "spare", None, None, builder,
                                              probes=probes, detector=d),
        "detect": lambda ex, d: detect(lm, ex.question, ex.sub_context, probes.folder, detector=d)}
    times: dict[tuple[str, str], list[float]] = {}
    for surface, run in surfaces.items():
        run(items[0], "auto")  # warm-up
        for _ in range(args.rounds):
            for reading in ("probe", "auto new", "auto cached"):
                if reading == "auto new":  # every question asked afresh, as a server meets new ones
                    training_free._RECALLED = OrderedDict()
                start = time.perf_counter()
                for ex in items:
                    run(ex, reading.split()[0])
                times.setdefault((surface, reading), []).append((time.perf_counter() - start) / len(items))
    for surface in surfaces:
        probe = statistics.median(times[surface, "probe"])
        print(f"{surface}: probe {1000 * probe:.0f} ms per question", end="")
        for reading in ("auto new", "auto cached"):
            t = statistics.median(times[surface, reading])
            print(f"; {reading} {1000 * t:.0f} ms ({t / probe:.2f}x)", end="")
        print()


if __name__ == "__main__":
    main()
