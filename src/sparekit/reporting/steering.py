"""The steering benchmark's reports: markdown tables of its summaries, the mean of several frontiers and
the readable form of hyper-parameters. Plain dicts in, text or dicts out: nothing here runs a model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: the metrics a leave-one-out summary averages over held-out relations (kinds)
HEADLINE = ("em_memory", "em_context", "em_no_conflict")


def describe(params: dict) -> str:
    """``layer=6,mi_mass=0.1``: readable hyper-parameters ("default" for none)."""
    if not params:
        return "default"
    return ",".join(f"{k}={'-'.join(map(str, v)) if isinstance(v, list | tuple) else v}"
                    for k, v in sorted(params.items()))


def markdown_table(summary: dict) -> str:
    """The side-by-side table: EM toward each target and EM without conflict, mean ± std (%)."""

    def cell(stat: dict) -> str:
        if stat["mean"] is None:
            return "n/a"
        return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"

    lines = ["| method | EM_M (→ memory) | EM_C (→ context) | EM no conflict (steered) | C→M | M→C | tuned (memory / context) |",
             "|---|---|---|---|---|---|---|"]
    for label, r in summary["methods"].items():
        tuned = r["tuned"]
        choice = " / ".join(f"{describe(tuned[d]['params'])}, s={tuned[d]['strength']}" for d in ("memory", "context"))
        lines.append(f"| {label} | {cell(r['em_memory'])} | {cell(r['em_context'])} | {cell(r['em_no_conflict'])} | "
                     f"{cell(r['conditional']['memory']['C→M'])} | {cell(r['conditional']['context']['M→C'])} | {choice} |")
    return "\n".join(lines)


def fold_table(summary: dict) -> str:
    """Leave one relation (kind) out: EM per fold (→ memory / → context / without conflict), then per metric
    the mean ± spread over folds and the worst fold (%)."""
    folds = summary["folds"]
    lines = ["| method | " + " | ".join(f"{f}: EM_M / EM_C / no conflict" for f in folds)
             + " | mean ± spread: EM_M / EM_C / no conflict | worst fold: EM_M / EM_C / no conflict |",
             "|---|" + "---|" * (len(folds) + 2)]
    for label, r in summary["methods"].items():
        per = " | ".join(" / ".join(f"{100 * summary['held_out'][f]['methods'][label][m]['mean']:.1f}"
                                    for m in HEADLINE) for f in folds)
        means = " / ".join(f"{100 * r[m]['mean']:.1f} ± {100 * r[m]['std']:.1f}" for m in HEADLINE)
        worst = " / ".join(f"{100 * r[m]['worst']:.1f}" for m in HEADLINE)
        lines.append(f"| {label} | {per} | {means} | {worst} |")
    return "\n".join(lines)


def mean_frontier(curves: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Point-wise mean of several frontiers, keeping the (method, direction, strength) points all of them have."""
    mean: dict[str, Any] = {}
    for label, by_direction in curves[0].items():
        mean[label] = {}
        for toward, points in by_direction.items():
            mean[label][toward] = []
            for point in points:
                same = [p for c in curves for p in c.get(label, {}).get(toward, [])
                        if p["strength"] == point["strength"]]
                if len(same) == len(curves):
                    mean[label][toward].append({key: point[key] if key == "strength"
                                                else float(np.mean([p[key] for p in same])) for key in point
                                                if all(key in p for p in same)})  # "seeds": newer runs only
    return mean


__all__ = ["HEADLINE", "describe", "fold_table", "markdown_table", "mean_frontier"]
