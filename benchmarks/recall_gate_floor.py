"""How often the recall gate fires on the leave-one-kind-out steering folds' test prompts, with and without a
confidence floor (issue 29; BENCHMARKS.md, "Third design round: a confidence floor").

Rebuilds each fold's test prompts from the options of "Gating steering on the recall detector" (no run directory
needed: memorisation is read from a probe run's closed-book cache, the same three-shot closed-book pass with seed
42), asks the recall detector's closed-book question once per test item, and counts the conflict (sub) and
no-conflict (org) prompts the gate fires on at each floor (:func:`recall_design.floored_score`). ``--methods``:
what the floor changes in each gated method's EM (the table's ``+recall`` rows): a prompt the floor silences is
answered unsteered instead of steered, so only those prompts are generated, unsteered and steered toward memory and
toward context at the method's tuned strength; the change is in points of the table's pooled EM (120 conflict
prompts per direction, 240 no-conflict cells).

    python benchmarks/recall_gate_floor.py --run runs/broad-probe --floors 0,0.12 --methods cad:0.5,adacad:1
"""

from __future__ import annotations

import argparse
import json
from itertools import product
from pathlib import Path

import sparekit
from bench_detectors import K_SHOT
from recall_design import floored_score
from sparekit.data import load_dataset
from sparekit.data.dataset import held_out_values
from sparekit.evaluation.harness import memorised_subset
from sparekit.probes.experiment import PROMPT_SEED
from sparekit.probes.training_free import recall_answers, unrecalled
from sparekit.steering import fitted_without_data
from sparekit.steering.base import DIRECTIONS
from sparekit.steering.bench import BenchConfig
from sparekit.steering.bench.cells import Cells
from sparekit.steering.bench.data import benchmark_splits
from sparekit.steering.bench.protocol import test_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a `sparekit probe --dataset broad` run directory")
    parser.add_argument("--floors", default="0,0.12")
    parser.add_argument("--seed", type=int, default=42, help="the test prompts' seed (the table's)")
    parser.add_argument("--methods", default="", help="comma-separated method:strength, e.g. cad:0.5,adacad:1")
    args = parser.parse_args()
    floors = [float(f) for f in args.floors.split(",")]
    methods = {m: float(v) for m, v in (pair.split(":") for pair in filter(None, args.methods.split(",")))}
    lm = sparekit.load_model("default")
    data = load_dataset("broad")
    memorised = memorised_subset(lm, data, seed=PROMPT_SEED, k_shot=K_SHOT,
                                 cache_dir=args.run / "data-train" / "closed-book")
    cells = Cells(lm, args.run, 8, data.context_match)
    table, changes = {}, {(m, f, c, toward): 0 for m in methods for f in floors for c in ("sub", "org")
                          for toward in DIRECTIONS}
    for kind in held_out_values(data, "kind"):
        config = BenchConfig(seeds=(args.seed,), layers=(9, 10, 11, 12), pool_groups=48, dev_groups=16,
                             test_limit=20, behaviour_seeds=(0,), held_out_kind=kind)
        pool, _, test = benchmark_splits(memorised, data, config)
        questions = [ex.question for ex in test]
        answers, confidence = recall_answers(lm, questions)
        table[kind] = {"items": len(test), "closed": dict(zip([ex.id for ex in test], answers))}
        for context in ("sub", "org"):
            prompts = test_prompts(config, test, pool, context, args.seed)
            found = unrecalled(answers, questions, [p.text for p in prompts], [p.text_without_context for p in prompts])
            for floor in floors:
                fired, _ = floored_score(found[None], confidence, floor, "spread")
                table[kind][f"{context} floor={floor:g}"] = int(fired.sum())
                quiet = [f"{q} -> {a!r} ({c:.2f})" for q, a, c, f, u in zip(questions, answers, confidence, fired[0],
                                                                             found) if u and not f]
                table[kind][f"{context} floor={floor:g} silenced"] = quiet
                silenced = [p for p, f, u in zip(prompts, fired[0], found) if u and not f]
                for (method, strength), toward in product(methods.items(), DIRECTIONS if silenced else ()):
                    changes[method, floor, context, toward] += silencing(lm, cells, silenced, method, strength, toward)
        print(kind, json.dumps({k: v for k, v in table[kind].items() if k != "closed"}), flush=True)
    for context in ("sub", "org"):
        for floor in floors:
            fired = sum(row[f"{context} floor={floor:g}"] for row in table.values())
            total = sum(row["items"] for row in table.values())
            print(f"{context} floor={floor:g}: fires on {fired} of {total} ({fired / total:.1%})")
    total = sum(row["items"] for row in table.values())
    for method, floor in product(methods, floors):
        under = {toward: 100 * changes[method, floor, "sub", toward] / total for toward in DIRECTIONS}
        without = 100 * sum(changes[method, floor, "org", toward] for toward in DIRECTIONS) / (2 * total)
        print(f"{method}+recall floor={floor:g}: EM change toward memory {under['memory']:+.1f}, toward context "
              f"{under['context']:+.1f}, without conflict {without:+.1f} points")


def silencing(lm, cells: Cells, prompts: list, method: str, strength: float, toward: str) -> int:
    """How many more of ``prompts`` hit ``toward``'s target answered unsteered than steered by ``method``."""
    with fitted_without_data("none").steer(lm, toward) as plain:
        unsteered = plain.generate(prompts)
    with fitted_without_data(method).steer(lm, toward, strength=strength) as steered:
        answers = steered.generate(prompts)
    return sum(cells.hit(u, p, toward) - cells.hit(a, p, toward)  # type: ignore[arg-type]
               for u, a, p in zip(unsteered, answers, prompts))


if __name__ == "__main__":
    main()
