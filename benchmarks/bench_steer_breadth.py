"""Does breadth buy SpARE transfer? Held-out EM against the number of training relations (issue 29 item 5).

One fixed set of held-out relations (``--held-out``). Per number of training relations k, ``--draws`` draws of
k relations among the others (:func:`sparekit.data.dataset.breadth_draws`, the drawing of the probe's breadth
curve, same seed, so both curves see the same draws). Each draw is one steering benchmark (none, SpARE) on the
held-out relations and the k drawn ones only, the held-out set standing in as the run's held-out kind: behaviour
data, SpARE's features and dev come from the k relations, test is the same held-out items in every draw
(``<out>/k<k>-draw<d>/``, resumable). SpARE's K and α are fixed (no choice on dev: the leave-one-relation-out
table's dev choice, K 0.1, α 2), so the curve measures the features, not the tuning.

``--probe-run``: the conflict probe's breadth curve on the same held-out relations and draws, from the capped
features of ``benchmarks/bench_detectors.py`` (its ``--run``). ``--report``: table and plot from the draws done.

    python benchmarks/bench_steer_breadth.py --out runs/steer-breadth --memorised runs/broad-kind/memorised.json \\
        --shard 0/2    # and --shard 1/2 in a second process
    python benchmarks/bench_steer_breadth.py --out runs/steer-breadth --memorised runs/broad-kind/memorised.json \\
        --report --probe-run runs/broad-probe
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

import sparekit
from sparekit.data import ConflictDataset, load_dataset
from sparekit.data.dataset import breadth_draws, held_out_values
from sparekit.errors import SparekitError
from sparekit.evaluation.harness import mean_std
from sparekit.hooks import Site
from sparekit.probes.experiment import PROBE_PARAMS, PROMPT_SEED, breadth_curve
from sparekit.reporting.figures import finish_figure, pyplot
from sparekit.steering.bench import BenchConfig, SteeringBenchmark
from sparekit.utils.io import atomic_write_json, read_json
from sparekit.utils.rundir import RunDir

from bench_detectors import capped_probing_data  # noqa: E402  (benchmarks/, beside this script)

HELD = "held-out"  # the kind the held-out relations get in a draw's dataset
METRICS = ("em_memory", "em_context", "em_no_conflict")


def draw_dataset(data: ConflictDataset, held: list[str], train: list[str]) -> ConflictDataset:
    """The rows of the held-out and training relations, the held-out ones marked by kind (what a run holds out)."""
    rows = [dataclasses.replace(ex, kind=HELD if ex.relation in held else "train") for ex in data
            if ex.relation in held or ex.relation in train]
    return ConflictDataset(rows, data.name, data.context_match)


def steer_config(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(methods=("none", "spare"), seeds=(42,), layers=(9, 10, 11, 12), pool_groups=args.pool_groups,
                       dev_groups=args.dev_groups, test_limit=args.test_limit, behaviour_seeds=(0,),
                       param_grids={"spare": {"layers": [[9, 10, 11, 12]], "mi_mass": [0.1]}},
                       strength_grids={"spare": [2.0]}, held_out_kind=HELD)


def jobs(args: argparse.Namespace, relations: list[str]) -> list[tuple[int, int, list[str], list[str]]]:
    """(k, draw, held-out relations, training relations), every size's first draw before any second one; a
    draw of the same relations as an earlier one (all but the held-out set) is not run twice."""
    held = args.held_out.split(",")
    per_size = {k: breadth_draws(relations, k, args.draws, args.seed, held) for k in args.sizes}
    return [(k, d, *per_size[k][d]) for d in range(args.draws) for k in args.sizes
            if not any(set(per_size[k][d][1]) == set(per_size[k][e][1]) for e in range(d))]


def run_draws(args: argparse.Namespace) -> None:
    """This shard's draws, each a resumable benchmark; a draw the data cannot support is recorded, not fatal."""
    data = load_dataset("broad")
    index, count = (int(x) for x in args.shard.split("/"))
    lm = sparekit.load_model("default")
    for k, draw, held, train in jobs(args, held_out_values(data, "relation"))[index::count]:
        out = args.out / f"k{k}-draw{draw}"
        if RunDir(out).done or (out / "skipped.json").is_file():  # more --draws later: only the new ones run
            continue
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "draw.json", {"k": k, "draw": draw, "held_out": held, "train": train})
        try:
            SteeringBenchmark(lm, draw_dataset(data, held, train), steer_config(args), out, progress=False,
                              memorised_file=args.memorised).run()
        except SparekitError as exc:
            atomic_write_json(out / "skipped.json", {"reason": str(exc)})
        print(k, draw, train, flush=True)


def steering_curve(out: Path) -> dict[int, dict]:
    """Per k: SpARE's and the unsteered held-out EM and SpARE's change over unsteered, mean ± std over the
    draws done, and each draw."""
    curve: dict[int, dict] = {}
    for folder in sorted(out.glob("k*-draw*")):
        draw, results = read_json(folder / "draw.json"), folder / "results.json"
        summary = read_json(results) if results.is_file() else {"methods": {}}
        methods = summary["methods"]
        if set(methods) != {"none", "spare"}:
            continue
        row = {f"{label}_{m}": methods[label][m]["mean"] for label in methods for m in METRICS}
        # each draw's unsteered EM moves with its pool's demonstrations: SpARE's change over it, per draw
        row.update({f"change_{m}": row[f"spare_{m}"] - row[f"none_{m}"] for m in METRICS})
        curve.setdefault(draw["k"], {"draws": []})["draws"].append(
            {**row, "train": draw["train"], "test_items": summary["splits"]["test_items"]})
    for point in curve.values():
        for key in point["draws"][0]:
            if key not in ("train", "test_items"):
                point[key] = mean_std([d[key] for d in point["draws"]])
    return dict(sorted(curve.items()))


def plot(curve: dict[int, dict], probe: dict[int, dict] | None, path: Path, title: str) -> Path:
    """SpARE's held-out EM toward memory and context (and without conflict) against k, unsteered beside it;
    the probe's held-out accuracy / AUROC in a third panel."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3 if probe else 2, figsize=(14 if probe else 10, 3.8))
    sizes = np.array(list(curve))
    for ax, toward in zip(axes, ("memory", "context")):
        for key, name, style in ((f"spare_em_{toward}", f"SpARE → {toward}", "-o"),
                                 ("spare_em_no_conflict", "SpARE without conflict", ":s"),
                                 (f"none_em_{toward}", "unsteered", "--^")):
            mean, std = (np.array([curve[k][key][s] for k in sizes]) for s in ("mean", "std"))
            ax.errorbar(sizes, 100 * mean, yerr=100 * std, fmt=style, markersize=4, capsize=3, label=name)
        ax.set_ylabel(f"held-out EM → {toward} (%)")
    if probe:
        ks = np.array(sorted(probe))
        for metric in ("accuracy", "auroc"):
            axes[2].errorbar(ks, [probe[k][metric]["mean"] for k in ks], yerr=[probe[k][metric]["std"] for k in ks],
                             fmt="-o", markersize=4, capsize=3, label=f"conflict probe {metric}")
        axes[2].axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
        axes[2].set_ylabel("held-out probe score")
        axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(k) for k in sizes])
        ax.set_xlabel("training relations")
        ax.grid(alpha=0.3)
    return finish_figure(fig, axes, title, path)


def report(args: argparse.Namespace) -> None:
    """The table and the plot of the draws done, and the probe's curve on the same held-out relations."""
    curve = steering_curve(args.out)
    probe = None
    if args.probe_run:
        lm, data = sparekit.load_model("default"), load_dataset("broad", seed=PROMPT_SEED)
        sites = [Site(int(layer)) for layer in args.probe_layers.split(",")]  # the layers the capture holds
        features = capped_probing_data(lm, data, sites, args.probe_run, 30, answers=False)
        probe = breadth_curve(features, Site(args.probe_layer), args.sizes, args.probe_draws,
                              probe_params=PROBE_PARAMS, held_out=args.held_out.split(","))
    atomic_write_json(args.out / "breadth.json", {"held_out": args.held_out.split(","), "steering": curve,
                                                  "probe": probe})
    for k, point in curve.items():
        print(k, len(point["draws"]), {m: f"{100 * point[m]['mean']:.1f}±{100 * point[m]['std']:.1f}"
                                       for m in point if m != "draws"}, flush=True)
    print(json.dumps(probe, indent=1))
    plot(curve, probe, args.plot, f"Gemma 3 270M, broad corpus: held out {args.held_out.replace(',', ', ')}; "
                                  "mean ± std over draws")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--memorised", type=Path, required=True, help="the broad corpus' memorised ids (a bench run's)")
    parser.add_argument("--held-out", default="capital,opposite,colour")
    parser.add_argument("--sizes", type=lambda s: [int(k) for k in s.split(",")], default=[1, 2, 4, 8, 13])
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool-groups", type=int, default=32)
    parser.add_argument("--dev-groups", type=int, default=8)
    parser.add_argument("--test-limit", type=int, default=24)
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th draw from the i-th")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--probe-run", type=Path, default=None)
    parser.add_argument("--probe-layers", default="7,10,13", help="the layers of the capped capture")
    parser.add_argument("--probe-layer", type=int, default=13, help="the probe's (best in distribution there)")
    parser.add_argument("--probe-draws", type=int, default=12)
    parser.add_argument("--plot", type=Path, default=Path("docs/steer_breadth.png"))
    args = parser.parse_args()
    if args.report:
        report(args)
    else:
        run_draws(args)


if __name__ == "__main__":
    main()
