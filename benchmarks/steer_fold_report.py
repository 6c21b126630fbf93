"""The table of a leave-one-out steering run from the folds that finished (issue 29 item 4, steering half).

``sparekit bench steer --split-by kind`` writes its summary only when every fold is done; folds run as their
own processes (``--held-out-kind K --out <run>/held-out-K``) write ``results.json`` after each method. This
reads the folds whose every listed method finished, builds the same summary
(:func:`sparekit.steering.bench.runner.fold_summary`: mean over folds, spread, worst fold) and prints the
fold table, then per fold and method EM with a 95 % Wilson interval over its test items (one seed: the
interval is over items only) and the dev choices.

    python benchmarks/steer_fold_report.py runs/broad-kind --methods none,cad,adacad,actadd,spare,spare+gate
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparekit.kv.sweep import wilson
from sparekit.reporting.steering import HEADLINE, describe, fold_table
from sparekit.steering.bench.runner import fold_summary
from sparekit.utils.io import atomic_write_json, read_json


def finished_folds(run: Path, methods: list[str]) -> dict[str, dict]:
    """Per fold (``held-out-<value>``) its results, if every method in ``methods`` finished there."""
    runs = {}
    for folder in sorted(run.glob("held-out-*")):
        results = folder / "results.json"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--methods", default="none,cad,adacad,actadd,spare,spare+gate")
    args = parser.parse_args()
    methods = args.methods.split(",")
    runs = finished_folds(args.run, methods)
    summary = fold_summary(runs, methods)
    atomic_write_json(args.run / "folds_done.json", summary)
    print(f"folds done: {', '.join(runs)}\n")
    print(fold_table(summary), "\n")
    print(interval_table(runs, methods))


if __name__ == "__main__":
    main()
