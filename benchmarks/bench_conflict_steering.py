"""Issue 12, items 3-5, at a dev-comparison scale: AdaCAD, JUICE and SpARE's output-score selection
against none / CAD / SpARE on the default model, relation ``capital`` held out.

The steering benchmark (:class:`~sparekit.steering.bench.runner.SteeringBenchmark`) at reduced scale:
one seed (42), ``--test-limit`` held-out items, the leave-one-relation-out splits of the shared run
(pool 128 groups, dev 32, behaviour seeds 0 and 1, layers 9-12). Nothing is tuned on dev here (CPU
budget): every method runs at fixed settings, written as the run's tuning so no dev cell is
generated (``dev_em`` stays ``null``); the fixed settings are the methods' defaults (the papers'
where they have one). ``--selection output_score`` runs SpARE with the output-score filter (use a
separate ``--out``: both runs name their row ``spare``). ``--reuse`` seeds the run folder with an
earlier run's behaviour data, conflict gate and unsteered cells (same splits: same files; any cell
whose prompts differ is regenerated), so the behaviour pass is not paid twice.

    cd /work/h12 && PYTHONPATH=src nice -n 10 python3 benchmarks/bench_conflict_steering.py \\
        --out runs/issue12/mi --memorised /work/main/runs/loro/memorised.json \\
        --reuse /work/main/runs/loro/held-out-capital --methods none,spare,cad,adacad,juice
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from sparekit.data import load_dataset
from sparekit.models import load_model
from sparekit.steering import make_method
from sparekit.reporting.steering import markdown_table
from sparekit.steering.bench import BenchConfig, SteeringBenchmark
from sparekit.steering.bench.protocol import method_kind, partner
from sparekit.utils.io import atomic_write_json

LAYERS = (9, 10, 11, 12)
#: kind -> (parameters, strength): each method's defaults (AdaCAD's 1.0 is the paper's rule α_t = JSD)
FIXED: dict[str, tuple[dict, float | None]] = {
    "none": ({}, None), "cad": ({}, 1.0), "adacad": ({}, 1.0), "dola": ({}, None),
    "juice": ({"n_heads": 3}, 1.0), "spare": ({"mi_mass": 0.07}, 2.0),
}


def config_for(methods: tuple[str, ...], selection: str, test_limit: int) -> BenchConfig:
    kinds = {method_kind(label)[0] for label in methods} | {partner(label)[0] for label in methods
                                                           if partner(label)[0] is not None}
    params = {kind: dict(FIXED[kind][0]) for kind in kinds}
    if "spare" in params:
        params["spare"]["selection"] = selection
    return BenchConfig(methods=methods, seeds=(42,), layers=LAYERS, pool_groups=128, dev_groups=32,
                       test_limit=test_limit, behaviour_seeds=(0, 1), held_out_relation="capital",
                       param_grids={k: {name: [value] for name, value in p.items()} for k, p in params.items()},
                       strength_grids={k: [FIXED[k][1]] for k in kinds if FIXED[k][1] is not None})


def write_fixed_tuning(out: Path, config: BenchConfig) -> None:
    """The fixed settings as ``tuning/<kind>.json``, in the form :meth:`SteeringBenchmark.tune` reads back."""
    for kind in {method_kind(label)[0] for label in config.methods} | set(config.param_grids):
        grid, strengths = config.grid(kind), config.strengths(make_method(kind))
        choice = {"params": {k: v[0] for k, v in grid.items()}, "strength": strengths[0], "dev_em": None}
        searched = json.loads(json.dumps({"grid": grid, "strengths": strengths}))
        atomic_write_json(out / "tuning" / f"{kind}.json", {"memory": choice, "context": choice,
                                                            "searched": searched, "note": "fixed, not tuned"})


def seed_from(previous: Path, out: Path) -> None:
    """Copy an earlier run's behaviour data, gate and unsteered cells into ``out`` (never overwriting)."""
    for name in ("behaviour.json", "behaviour.safetensors"):
        if (previous / name).is_file() and not (out / name).exists():
            shutil.copy2(previous / name, out / name)
    if (previous / "gate_probe" / "gate.json").is_file() and not (out / "gate_probe").exists():
        shutil.copytree(previous / "gate_probe", out / "gate_probe")
    for cell in (previous / "generations" / "test").glob("none-*.jsonl"):
        target = out / "generations" / "test" / cell.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(cell, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", default="none,spare,cad,adacad,juice")
    parser.add_argument("--selection", default="mi", choices=("mi", "output_score"))
    parser.add_argument("--test-limit", type=int, default=30)
    parser.add_argument("--memorised", type=Path, required=True, help="closed-book memorised ids (skips that pass)")
    parser.add_argument("--reuse", type=Path, help="an earlier run folder with the same splits")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = config_for(tuple(args.methods.split(",")), args.selection, args.test_limit)
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.out / "memorised.json").exists():
        shutil.copy2(args.memorised, args.out / "memorised.json")
    if args.reuse:
        seed_from(args.reuse, args.out)
    write_fixed_tuning(args.out, config)
    lm = load_model("default", device="cpu")
    summary = SteeringBenchmark(lm, load_dataset("default"), config, args.out, batch_size=8).run()
    table = markdown_table(summary)
    (args.out / "table.md").write_text(table + "\n", encoding="utf-8")
    print(json.dumps(summary["splits"]), json.dumps(summary["behaviour"]))
    print(table)


if __name__ == "__main__":
    main()
