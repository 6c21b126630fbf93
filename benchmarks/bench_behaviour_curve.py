"""SpARE's test EM against the amount of behaviour data (issue 12, item 2), on a finished benchmark run.

Takes a ``sparekit bench steer`` run directory (one held-out relation of ``--split-by relation``, or
an in-distribution run), keeps its splits, its dev-tuned SpARE choice per direction and its test
prompts, and refits SpARE on a seeded, label-stratified fraction of the run's behaviour data. Each
point is scored on the run's test items (seed 42 demonstrations): EM toward the target under conflict,
and EM without conflict (the true context, steered). Fraction 1 is the run's own SpARE row. The
cells are cached in ``<run>/generations/curve`` (rerun to resume).

If the curve still rises at fraction 1, more behaviour data would help (the paper uses about 7.5×
more than this benchmark: every k in {3, 4, 5} × 5 seeds over all pool rows); if it is flat from
half the data on, the amount is not what holds SpARE back.

    python benchmarks/bench_behaviour_curve.py --run runs/loro1/held-out-city_country \\
        --memorised runs/loro1/memorised.json --fractions 0.25,0.5,1 --subsample-seeds 0,1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from sparekit.data import load_dataset
from sparekit.models import load_model
from sparekit.steering import DIRECTIONS, BehaviourData
from sparekit.steering.bench import BenchConfig, SteeringBenchmark


def stratified_subsample(data: BehaviourData, fraction: float, seed: int) -> BehaviourData:
    """``fraction`` of the uses-context and of the uses-memory rows, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.choice(rows, max(2, round(fraction * len(rows))), replace=False)
                                   for rows in (np.flatnonzero(data.labels == 1), np.flatnonzero(data.labels == 0))]))
    index = torch.as_tensor(keep)
    return BehaviourData([data.prompts[i] for i in keep], data.labels[keep],
                         {layer: h[index] for layer, h in data.hidden.items()}, data.pool, data.meta, data.lm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished bench steer run directory")
    parser.add_argument("--memorised", type=Path, required=True, help="the run's memorised.json")
    parser.add_argument("--fractions", default="0.25,0.5,1")
    parser.add_argument("--subsample-seeds", default="0,1")
    parser.add_argument("--seed", type=int, default=42, help="test demonstrations")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    stored = json.loads((args.run / "config.json").read_text())
    config = BenchConfig.from_record(stored)
    lm, dataset = load_model(stored["model"]), load_dataset(stored["dataset"])
    bench = SteeringBenchmark(lm, dataset, config, args.run, progress=False, memorised_file=args.memorised)
    pool, dev, test = bench.splits()
    full = bench.behaviour(pool)
    tuned = bench.tuner.tune("spare", full, dev, pool)
    rows = []
    for fraction in (float(f) for f in args.fractions.split(",")):
        for subsample in ([0] if fraction == 1 else [int(s) for s in args.subsample_seeds.split(",")]):
            data = full if fraction == 1 else stratified_subsample(full, fraction, subsample)
            label = "spare" if fraction == 1 else f"spare-behaviour{fraction}-sub{subsample}"
            split = "test" if fraction == 1 else "curve"
            point = {"fraction": fraction, "subsample_seed": subsample, "behaviour_rows": len(data.labels)}
            for toward in DIRECTIONS:
                choice = tuned[toward]
                method = bench.tuner.method("spare", choice["params"]).fit(data)
                for context in ("sub", "org"):
                    prompts = bench.test_prompts(test, pool, context, args.seed)
                    preds = bench.cells.get(split, label, choice["params"], method, prompts, toward,
                                               choice["strength"], None, args.seed)
                    point[f"{toward}/{context}"] = 100 * bench.cells.score(preds, prompts,
                                                                      toward if context == "sub" else "memory")
            rows.append(point)
            print(json.dumps(point), flush=True)
    print(f"\n{stored['dataset']}, held out: {stored.get('held_out_relation')}, {len(test)} test items, "
          f"seed {args.seed}")
    print("| behaviour data | rows | EM_M | EM_C | EM no conflict |\n|---|---|---|---|---|")
    for fraction in sorted({r["fraction"] for r in rows}):
        points = [r for r in rows if r["fraction"] == fraction]

        def mean(key: str, points: list = points) -> str:
            values = [p[key] for p in points]
            return f"{np.mean(values):.1f}" + (f" ± {np.std(values):.1f}" if len(values) > 1 else "")

        no_conflict = [(p["memory/org"] + p["context/org"]) / 2 for p in points]
        print(f"| {fraction:g} | {points[0]['behaviour_rows']} | {mean('memory/sub')} | {mean('context/sub')} | "
              f"{np.mean(no_conflict):.1f} |")


if __name__ == "__main__":
    main()
