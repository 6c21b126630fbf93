"""The table of a leave-one-out steering run from the folds that finished (issue 29 item 4, steering half).

``sparekit bench steer --split-by kind`` writes its summary only when every fold is done; folds run as their
own processes (``--held-out-kind K --out <run>/held-out-K``) write ``results.json`` after each method. This
reads the folds whose every listed method finished, builds the same summary
(:func:`sparekit.steering.bench.runner.fold_summary`: mean over folds, spread, worst fold) and prints the
fold table, then per fold and method EM with a 95 % Wilson interval over its test items (one seed: the
interval is over items only) and the dev choices; for gated methods, how often their gate fired on the test
prompts; EM without conflict by the direction steered;
with ``--matched cad,adacad`` (each fold's ``frontier.json`` from ``sparekit bench frontier --methods
cad``; a baseline without a sweep counts with its tuned setting), each gated method against the best of those
baselines at the same EM without conflict. ``--test-format rag`` reads what ``bench steer --test-format rag`` wrote
(``results-rag.json``, ``frontier-rag.json``).

    python benchmarks/steer_fold_report.py runs/broad-kind --methods none,cad,adacad,actadd,spare,spare+gate
    python benchmarks/steer_fold_report.py runs/broad-kind --methods none,cad,adacad,cad+recall --matched cad,adacad
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sparekit.kv.sweep import wilson
from sparekit.reporting.steering import HEADLINE, describe, fold_table, mean_frontier
from sparekit.steering.base import DIRECTIONS
from sparekit.steering.bench.protocol import BenchConfig
from sparekit.steering.bench.runner import fold_summary
from sparekit.utils.io import atomic_write_json, read_json


def finished_folds(run: Path, methods: list[str], output=BenchConfig().output) -> dict[str, dict]:
    """Per fold (``held-out-<value>``) its results, if every method in ``methods`` finished there; ``output``
    names the files of a test format (:meth:`BenchConfig.output`)."""
    runs = {}
    for folder in sorted(run.glob("held-out-*")):
        results = folder / output("results.json")
        if results.is_file() and set(methods) <= set(read_json(results)["methods"]):
            runs[folder.name.removeprefix("held-out-")] = read_json(results)
    return runs


def interval_table(runs: dict[str, dict], methods: list[str]) -> str:
    """Per fold and method: EM → memory / → context / without conflict (%) with 95 % Wilson intervals."""
    lines = ["| held out | test items | method | EM_M [95 %] | EM_C [95 %] | no conflict [≈95 %] "
             "| dev choice (memory / context) |", "|---|---|---|---|---|---|---|"]
    for fold, result in runs.items():
        n = result["splits"]["test_items"]
        for label in methods:
            r = result["methods"][label]
            cells = []
            for metric in HEADLINE:  # no conflict: both directions, the same n items twice (approximate)
                items = 2 * n if metric == "em_no_conflict" else n
                low, high = wilson(r[metric]["mean"] * items, items)
                cells.append(f"{100 * r[metric]['mean']:.1f} [{100 * low:.0f}–{100 * high:.0f}]")
            tuned = " / ".join(f"{describe(r['tuned'][d]['params'])}, s={r['tuned'][d]['strength']}"
                               for d in ("memory", "context"))
            lines.append(f"| {fold} | {n} | {label} | {' | '.join(cells)} | {tuned} |")
    return "\n".join(lines)


def fire_table(runs: dict[str, dict], methods: list[str]) -> str:
    """Per fold and gated method: the share of test prompts its gate fired on, with and without conflict (%)."""
    gated = [m for m in methods if all("gate_fired" in r["methods"][m] for r in runs.values())]
    lines = ["| gated method | " + " | ".join(f"{f}: conflict / no conflict" for f in runs) + " | mean |",
             "|---|" + "---|" * (len(runs) + 1)]
    for label in gated:
        rates = [[100 * r["methods"][label]["gate_fired"][c]["mean"] for c in ("sub", "org")] for r in runs.values()]
        cells = [f"{a:.0f} / {b:.0f}" for a, b in rates] + [" / ".join(f"{x:.1f}" for x in np.mean(rates, 0))]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def no_conflict_table(runs: dict[str, dict], methods: list[str]) -> str:
    """EM without conflict (%) by the direction the no-conflict prompts were steered: the mean over folds (and
    the change from ``none``'s), pooled over the folds' test items, and the worst fold — what "within 1 point of
    unsteered without conflict" reads, per direction."""
    items = np.array([r["splits"]["test_items"] for r in runs.values()])
    lines = ["| method | " + " | ".join(f"→ {t}: mean (vs none) / pooled / worst" for t in DIRECTIONS) + " |",
             "|---|" + "---|" * len(DIRECTIONS)]

    def em(label: str, toward: str) -> np.ndarray:
        return np.array([100 * r["methods"][label][f"em_no_conflict_{toward}"]["mean"] for r in runs.values()])
    for label in methods:
        cells = []
        for toward in DIRECTIONS:
            values, base = em(label, toward), em("none", toward) if "none" in methods else None
            change = "" if base is None else f" ({values.mean() - base.mean():+.1f})"
            cells.append(f"{values.mean():.1f}{change} / {np.average(values, weights=items):.1f} / {values.min():.1f}")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def baseline_curve(points: list[dict], unsteered: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(EM without conflict, EM toward the target) along a baseline's strength sweep and unsteered (not steering is
    always an option; it is *not* CAD's α = 0 end toward memory, which decodes without the passage), sorted by EM
    without conflict, each target EM raised to the best the sweep reaches at that EM without conflict or more (the
    upper envelope: in the baseline's favour where the sweep is not monotone). Points are joined linearly: measure
    the small strengths, or the join can flatter the gated rows (BENCHMARKS.md, the CAD sweep on the LORO folds)."""
    pairs = sorted([unsteered] + [(p["em_no_conflict"], p["em_target"]) for p in points])
    best = np.maximum.accumulate(np.array([b for _, b in pairs])[::-1])[::-1]
    return np.array([a for a, _ in pairs]), best


def matched(curve: tuple[np.ndarray, np.ndarray], no_conflict: float) -> float:
    """The baseline's EM toward the target where its sweep has ``no_conflict`` EM without conflict (linear
    between the neighbouring points of :func:`baseline_curve`; the curve's end beyond them)."""
    x, y = curve
    return float(np.interp(no_conflict, x, y))


def baseline_points(result: dict, frontier: dict, baseline: str, toward: str) -> list[dict]:
    """``baseline``'s points toward ``toward``: its strength sweep where ``frontier`` has one, else its one
    dev-tuned setting from ``result``."""
    if baseline in frontier:
        return frontier[baseline][toward]
    r = result["methods"][baseline]
    return [{"em_no_conflict": r[f"em_no_conflict_{toward}"]["mean"], "em_target": r[f"em_{toward}"]["mean"]}]


def matched_rows(result: dict, frontier: dict, baselines: list[str], gated: list[str]) -> list[tuple]:
    """(method, direction, its EM without conflict, its EM toward the target, the best of ``baselines`` at that
    EM without conflict) for one fold's results (or their mean) and its frontiers."""
    none = result["methods"]["none"]
    rows = []
    for toward in DIRECTIONS:
        points = [p for b in baselines for p in baseline_points(result, frontier, b, toward)]
        curve = baseline_curve(points, (none[f"em_no_conflict_{toward}"]["mean"], none[f"em_{toward}"]["mean"]))
        for label in gated:
            r = result["methods"][label]
            free, target = r[f"em_no_conflict_{toward}"]["mean"], r[f"em_{toward}"]["mean"]
            rows.append((label, toward, free, target, matched(curve, free)))
    return rows


def matched_table(run: Path, runs: dict[str, dict], methods: list[str], baselines: list[str],
                  output=BenchConfig().output) -> str:
    """Each gated method against the best of ``baselines`` (their sweeps, else their tuned settings) at matched
    EM without conflict: on the mean over folds (the mean frontier, the mean of the rows) and the number of
    folds where the gated method is ahead."""
    frontiers = {f: read_json(path) if (path := run / f"held-out-{f}" / output("frontier.json")).is_file() else {}
                 for f in runs}  # a fold without a sweep: each baseline at its tuned setting
    gated = [m for m in methods if "+" in m]
    per_fold = {f: matched_rows(runs[f], frontiers[f], baselines, gated) for f in runs}
    mean_result = {"methods": {label: {key: {"mean": float(np.mean([r["methods"][label][key]["mean"]
                                                                       for r in runs.values()]))}
                                       for key in runs[next(iter(runs))]["methods"][label]
                                       if key.startswith("em_")} for label in ["none", *baselines, *gated]}}
    rows = matched_rows(mean_result, mean_frontier(list(frontiers.values())), baselines, gated)
    name = " / ".join(baselines)
    lines = [f"| gated method | toward | mean: EM without conflict / toward target / best of {name} there | "
             + " | ".join(f"{f}: gated / best baseline" for f in per_fold) + " | folds ahead / level / behind |",
             "|---|---|---|" + "---|" * len(per_fold) + "---|"]
    for i, (label, toward, free, target, base) in enumerate(rows):
        folds = [f"{100 * fold[i][3]:.0f} / {100 * fold[i][4]:.0f}" for fold in per_fold.values()]
        lead = [round(100 * (fold[i][3] - fold[i][4]), 6) for fold in per_fold.values()]  # level: equal EM
        ahead, behind = sum(d > 0 for d in lead), sum(d < 0 for d in lead)
        lines.append(f"| {label} | {toward} | {100 * free:.1f} / {100 * target:.1f} / {100 * base:.1f} | "
                     f"{' | '.join(folds)} | {ahead} / {len(lead) - ahead - behind} / {behind} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--methods", default="none,cad,adacad,actadd,spare,spare+gate")
    parser.add_argument("--matched", metavar="BASELINES", help="compare the gated methods with the best of these "
                        "baselines (comma-separated; each one's strength sweep from the folds' frontier.json, else "
                        "its tuned setting)")
    parser.add_argument("--test-format", default="three_shot",
                        help="the folds' test format (bench steer --test-format)")
    args = parser.parse_args()
    methods = args.methods.split(",")
    output = BenchConfig(test_format=args.test_format).output
    runs = finished_folds(args.run, methods, output)
    if not runs:  # each results.json lists the methods of its fold's last bench steer call
        parser.exit(2, f"steer_fold_report: no held-out-* folder under {args.run} has {output('results.json')} with "
                       f"every method of --methods {args.methods}; rerun bench steer there with all of them (finished "
                       f"cells are read back) or list fewer methods\n")
    summary = fold_summary(runs, methods)
    atomic_write_json(args.run / output("folds_done.json"), summary)
    print(f"folds done: {', '.join(runs)}\n")
    print(fold_table(summary), "\n")
    print(interval_table(runs, methods), "\n")
    print(fire_table(runs, methods), "\n")
    print(no_conflict_table(runs, methods))
    if args.matched:
        print("\n" + matched_table(args.run, runs, methods, args.matched.split(","), output))


if __name__ == "__main__":
    main()
