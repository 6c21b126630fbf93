"""Replay a recall gate on a finished leave-one-relation-out steering run: the gated rows' EM from the run's cached
unsteered and steered answers, for any closed-book prompt the gate could ask (issue 29, the gated-steering goal).

A gated method answers a prompt steered where the gate fires and unsteered where it does not, so its EM follows
from two cached cells per prompt (``none`` and the ungated method, at the run's dev-tuned strength) and the gate's
decisions: nothing is steered again. Each gate is a recall_design.py candidate (``mixed6``: the shipped recall gate;
``A|B``: fire only where *neither* closed-book answer is named, two generations per prompt). The gate's answers are
generated per test item (cached beside recall_design.py's, ``--answers``). With ``mixed6`` the replay reproduces the
run's own ``+recall`` rows (checked per fold, printed). A gate's part ``twin`` is the answer to each test prompt's
own closed-book twin (its demonstrations kept, the passage left out; one generation per item and seed, cached as
``twin-<fold>-seed<seed>.json``), counted only where it is short (recall_design.py's ``--twin-words``).
``--from-run`` takes the steered answers from the run's own recall-gated cells instead of the ungated method's (for
seeds whose ungated cells were never generated): valid for a gate that fires only where the run's gate fired, i.e.
the library's two answers (``mixed6|mixed6+knnall3``) with more answers OR-ed in. ``--source-aware`` adds each gate
restricted to the prompts whose training-free source reading (:func:`~sparekit.probes.training_free.memory_first`,
one prompt pass) is not the target: steer toward context only where the model is about to answer from memory, and
the reverse. Means over folds
and pooled over items are printed and written to ``gate-replay.json``.

    python benchmarks/gate_replay.py --bench runs/broad-relation --answers runs/recall-knn \\
      --gates "mixed6,mixed6|mixed6+knn3" --methods cad:0.5,adacad:1
    python benchmarks/gate_replay.py --bench runs/broad-relation-full --answers runs/recall-twin --from-run \\
      --gates "mixed6|mixed6+knnall3,mixed6|mixed6+knnall3|twin" --methods cad:0.5,adacad:1 --seeds 42,43,44
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import fmean

import numpy as np

import sparekit
from recall_design import brief, cached_answers
from steer_fold_report import matched_table
from sparekit.data import ConflictDataset, load_dataset
from sparekit.evaluation.metrics import exact_match
from sparekit.probes.training_free import RECALL_READING, memory_first, unrecalled
from sparekit.steering import fitted_without_data
from sparekit.steering.base import DIRECTIONS
from sparekit.steering.bench import BenchConfig
from sparekit.steering.bench.cells import Cells
from sparekit.steering.bench.data import benchmark_splits
from sparekit.steering.bench.protocol import test_prompts
from sparekit.steering.gate import RecallGate, training_free_gate
from sparekit.utils.io import atomic_write_json

#: the leave-one-relation-out table's options ("Leave one relation out with the recall gate")
FOLD_OPTIONS = {"seeds": (42,), "layers": (9, 10, 11, 12), "pool_groups": 48, "dev_groups": 16, "test_limit": 20,
                "behaviour_seeds": (0,)}


def method_labels(spec: str) -> dict[str, tuple[str, float | str]]:
    """``"cad:0.5,adacad:1,cad:0.05,cad:dev"`` -> {label: (method, strength)}: a method's first strength (the run's
    tuned one) under its own name, each further one as ``cad@0.05`` (a `bench frontier` sweep's cells); ``dev``: each
    fold's own dev choice per direction (its ``tuning/<method>.json``)."""
    labels: dict[str, tuple[str, float | str]] = {}
    for pair in spec.split(","):
        kind, value = pair.split(":")
        strength: float | str = value
        if value != "dev":
            strength = float(value)
            strength = int(strength) if strength == int(strength) else strength  # the cells' names: 1, not 1.0
        labels[kind if kind not in labels else f"{kind}@{value}"] = (kind, strength)
    return labels


class EarlierReading(RecallGate):
    """The recall gate as an earlier reading signed its cells (each reading fires wherever the next one does: an
    answer more, accents dropped, an echo decides nothing), so ``--from-run`` can read a run made under it."""

    def __init__(self, reading: int):
        self.reading = reading

    def signature(self) -> str:
        return f"recall:{self.reading}"


def fold_strength(fold: Path, kind: str, strength: float | str | None, toward: str) -> float | str | None:
    """``strength``, or for ``dev`` the fold's dev-tuned strength of ``kind`` toward ``toward``."""
    if strength != "dev":
        return strength
    return json.loads((fold / "tuning" / f"{kind}.json").read_text())[toward]["strength"]


def fold_cells(lm, fold: Path, data: ConflictDataset, relation: str, methods: dict[str, tuple[str, float | str]],
               seed: int, from_run: bool = False):
    """The fold's test items, prompts per context, and cached answers per (label, context, direction); the run's
    own recall-gated rows (``cad+recall``) where it has them."""
    path = fold / "memorised.json" if (fold / "memorised.json").is_file() else fold.parent / "memorised.json"
    memorised = set(json.loads(path.read_text())["ids"])
    config = BenchConfig(**FOLD_OPTIONS, held_out_relation=relation)
    pool, _, test = benchmark_splits(data.subset([i for i, ex in enumerate(data) if ex.id in memorised]), data,
                                     config)
    cells = Cells(lm, fold, 8, data.context_match)
    prompts = {c: test_prompts(config, test, pool, c, seed) for c in ("sub", "org")}
    answers = {}
    run_gated = {f"{kind}+recall": (f"{kind}+recall", strength) for label, (kind, strength) in methods.items()
                 if label == kind}
    for label, (kind, strength) in {"none": ("none", None), **methods, **run_gated}.items():
        method = fitted_without_data(kind.removesuffix("+recall"))
        gates = ((training_free_gate("recall"), *map(EarlierReading, range(RECALL_READING - 1, 0, -1)), None)
                 if label in run_gated else (None,))
        for context, toward in ((c, t) for c in ("sub", "org") for t in DIRECTIONS):
            # the run's gated cells under today's recall reading, an earlier one, else as a run from before cells
            # recorded theirs
            chosen = fold_strength(fold, kind.removesuffix("+recall"), strength, toward)
            found = next((got for gate in gates if (got := cells.get("test", kind, {}, method, prompts[context],
                                                                     toward, chosen, gate, seed, cached_only=True))
                          is not None), None)
            if found is None and (label in run_gated or (from_run and label in methods)):
                break  # a row this fold's cells cannot give (with --from-run the ungated rows are not needed)
            if found is None:
                raise SystemExit(f"{fold}: no cached {label} answers for {context} toward {toward}")
            answers[label, context, toward] = found
    return test, prompts, answers, cells


def em_cells(cells: Cells, prompts: dict, answers: dict, label: str, fired: dict | None = None) -> dict[str, float]:
    """EM (percent) toward memory, toward context (conflict prompts) and without conflict (both directions);
    ``fired``: per (context, direction) a bool per prompt, where the gated row takes ``label``'s answer, else
    ``none``'s."""
    def answered(context: str, toward: str) -> list[str]:
        if fired is None:
            return answers[label, context, toward]
        return [s if f else n for s, n, f in zip(answers[label, context, toward], answers["none", context, toward],
                                                 fired[context, toward])]

    free = {t: 100 * cells.score(answered("org", t), prompts["org"], t) for t in DIRECTIONS}
    return {"memory": 100 * cells.score(answered("sub", "memory"), prompts["sub"], "memory"),
            "context": 100 * cells.score(answered("sub", "context"), prompts["sub"], "context"),
            "no_conflict": fmean(free.values()), **{f"no_conflict_{t}": free[t] for t in DIRECTIONS}}


def as_result(row: dict) -> dict:
    """One fold's replayed rows in ``results.json``'s shape (fractions under ``em_*``), for the matched table."""
    return {"methods": {label: {f"em_{cell}": {"mean": value / 100} for cell, value in ems.items()
                                if cell != "no_conflict"}
                        for label, ems in row.items()
                        if label not in ("items", "seeds") and not label.startswith("gate ")}}


def replay_fold(lm, fold: Path, data: ConflictDataset, relation: str, methods: dict[str, tuple[str, float | str]],
                gates: list[str], args: argparse.Namespace, seed: int) -> dict:
    """One fold's rows for the test demonstrations of ``seed``: each method ungated and under each gate."""
    test, prompts, answers, cells = fold_cells(lm, fold, data, relation, methods, seed, args.from_run)
    found = {name: {ex_id: row["closed"] for ex_id, row in (twin_answers(lm, fold, seed, test, prompts["org"], args)
                                                             if name == "twin" else
                                                             cached_answers(lm, name, test, args.answers)).items()}
             for name in {n for gate in gates for n in gate.split("|")}}
    steered = {method: f"{method}+recall" if args.from_run else method for method in methods}
    # (row label, the answers it takes where steered, where it steers: None for an ungated row)
    replays: list[tuple[str, str, dict | None]] = [
        (label, label, None) for label in ("none", *methods)
        if all((label, c, t) in answers for c in ("sub", "org") for t in DIRECTIONS)]
    replays += [(f"{method}+recall (run)", f"{method}+recall", None) for method in methods
                if all((f"{method}+recall", c, t) in answers for c in ("sub", "org") for t in DIRECTIONS)]
    row: dict = {"items": len(test)}
    for gate in gates:
        conflict = {}
        for context in ("sub", "org"):  # a conflict where the passage names none of the gate's answers
            closed = [tuple(brief(found[n][ex.id], ex.question, args.twin_words) if n == "twin" else found[n][ex.id]
                            for n in gate.split("|")) for ex in test]
            conflict[context] = unrecalled(closed, [ex.question for ex in test], [p.text for p in prompts[context]],
                                           [p.text_without_context for p in prompts[context]]) == 1.0
        row[f"gate {gate}"] = {c: float(np.mean(f)) for c, f in conflict.items()}
        variants = {gate: {(c, t): f for c, f in conflict.items() for t in DIRECTIONS}}
        if args.source_aware:
            first = gate.split("|")[0]
            memory = {c: memory_first(lm, [p.text for p in prompts[c]], [found[first][ex.id] for ex in test]) == 1.0
                      for c in ("sub", "org")}
            variants[f"{gate}+source"] = {(c, t): f & (memory[c] if t == "context" else ~memory[c])
                                          for c, f in conflict.items() for t in DIRECTIONS}
            row[f"gate {gate}+source"] = {f"{c} {t}": float(np.mean(f))
                                          for (c, t), f in variants[f"{gate}+source"].items()}
        replays += [(f"{method}+{name.replace('|', ' or ')}", steered[method], fired)  # "|" splits a markdown cell
                    for name, fired in variants.items() for method in methods]
    for label, source, fired in replays:
        row[label] = em_cells(cells, prompts, answers, source, fired)
    if args.twin_right:  # the same rows on the items whose own closed-book twin the model answers right
        twin = twin_answers(lm, fold, seed, test, prompts["org"], args)
        right = [exact_match(twin[ex.id]["closed"], list(ex.org_answer)) for ex in test]
        row["twin right"] = {"share": 100 * float(np.mean(right))}
        for label, source, fired in replays:
            known_prompts, known_answers, known_fired = on_items(right, prompts, answers, fired)
            row[f"{label} | twin right"] = em_cells(cells, known_prompts, known_answers, source, known_fired)
    return row


def on_items(keep: list[bool], *cells: dict | None) -> list[dict | None]:
    """Each per-item dict of lists (prompts, answers, a gate's decisions) restricted to the items ``keep`` marks."""
    return [None if found is None else {key: [v for v, k in zip(values, keep, strict=True) if k]
                                        if isinstance(values, list) else np.asarray(values)[np.asarray(keep, bool)]
                                        for key, values in found.items()} for found in cells]


def twin_answers(lm, fold: Path, seed: int, test: ConflictDataset, prompts: list, args: argparse.Namespace
                 ) -> dict[str, dict]:
    """Per item id the :func:`~recall_design.cached_answers` row of its test prompt's closed-book twin under
    ``seed``'s demonstrations (the conflict and no-conflict prompts share it), cached per fold and seed."""
    return cached_answers(lm, f"twin-{fold.name}-seed{seed}", test, args.answers,
                          {p.example.id: p.text_without_context for p in prompts})


def mean_rows(rows: list[dict]) -> dict:
    """The seeds' rows of one fold averaged cell by cell (the rows every seed has; the same items in each)."""
    labels = [label for label in rows[0] if label != "items" and all(label in row for row in rows)]
    return {"items": rows[0]["items"], "seeds": len(rows),
            **{label: {cell: fmean(row[label][cell] for row in rows) for cell in rows[0][label]} for label in labels}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True, help="a `bench steer --split-by relation` run")
    parser.add_argument("--answers", type=Path, required=True, help="recall_design.py's answers cache folder")
    parser.add_argument("--gates", default="mixed6", help="comma-separated candidates (A|B: either answer named)")
    parser.add_argument("--methods", default="cad:0.5,adacad:1",
                        help="method:strength, the run's dev-tuned one first; a method's further strengths (cad:0.05) "
                        "read a `bench frontier` sweep's cells, cad:dev each fold's dev choice per direction")
    parser.add_argument("--seeds", default="42", help="test-demonstration seeds, comma-separated: a fold's rows are "
                        "their mean")
    parser.add_argument("--matched", metavar="BASELINES", help="each gated row against the best of these ungated "
                        "baselines at its EM without conflict (their sweeps from the folds' frontier.json, "
                        "steer_fold_report.py's table)")
    parser.add_argument("--from-run", action="store_true", help="steered answers from the run's own recall-gated "
                        "cells (for a gate firing only where the run's did), not the ungated method's")
    parser.add_argument("--twin-words", type=int, default=1, help="a twin's answer counts where it recalls at most "
                        "this many words beyond the question's")
    parser.add_argument("--twin-right", action="store_true", help="also every row on the items whose own "
                        "closed-book twin the model answers right (the others conflict with what it recalls there)")
    parser.add_argument("--source-aware", action="store_true",
                        help="also each gate steering only where the predicted source (memory_first) is not the target")
    args = parser.parse_args()
    methods = method_labels(args.methods)
    gates = args.gates.split(",")
    lm = sparekit.load_model("default")
    data = load_dataset("broad")
    args.answers.mkdir(parents=True, exist_ok=True)
    table: dict = {}
    for fold in sorted(args.bench.glob("held-out-*")):
        relation = fold.name.removeprefix("held-out-")
        rows = [replay_fold(lm, fold, data, relation, methods, gates, args, seed)
                for seed in map(int, args.seeds.split(","))]
        table[relation] = mean_rows(rows)
        print(relation, json.dumps(table[relation]), flush=True)
    labels = [k for k in next(iter(table.values())) if k not in ("items", "seeds")]
    items = [row["items"] for row in table.values()]
    summary = {label: {cell: fmean(row[label][cell] for row in table.values())
                       for cell in next(iter(table.values()))[label]} for label in labels}
    pooled = {label: {cell: float(np.average([row[label][cell] for row in table.values()], weights=items))
                      for cell in next(iter(table.values()))[label]} for label in labels}
    atomic_write_json(args.answers / "gate-replay.json", {"folds": table, "mean": summary, "pooled": pooled})
    for name, result in (("mean of folds", summary), ("pooled over items", pooled)):
        print(name)
        for label, cells_mean in result.items():
            print(f"  {label:32s}", "  ".join(f"{k} {v:.3f}" if label.startswith("gate") else f"{k} {v:.1f}"
                                             for k, v in cells_mean.items()))
    if args.matched:
        runs = {relation: as_result(row) for relation, row in table.items()}
        gated = [label for label in runs[next(iter(runs))]["methods"] if "+" in label]
        print("\n" + matched_table(args.bench, runs, gated, args.matched.split(",")))


if __name__ == "__main__":
    main()
