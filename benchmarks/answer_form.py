"""Is a held-out prompt format's EM about the answer's source or its form? Rescores a leave-one-out run's test
cells (``bench steer --test-format``) by containment beside EM.

A zero-shot prompt (``rag``, ``llamaindex``, ``zero_shot``) lets a base model answer in a sentence ("The Taka is
the official currency of Bangladesh."), which EM counts as a miss whatever its source. *Containment* counts a hit
where the target answer (any alias, SQuAD-normalised) is a whole-word span of the normalised prediction and, on a
conflict prompt, the other side's answer is not: the answer's source with its form set aside. Per method, the
mean over folds of each fold's score (the tuned setting of each direction, as the run's ``results*.json``), both
ways, and the share of unsteered answers on the no-conflict prompts that are longer than every gold alias.

    python benchmarks/answer_form.py runs/broad-relation --test-format rag \
      --methods none,icl,cad,adacad,cad+recall,adacad+recall,actadd,spare,spare+recall
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sparekit.data import load_dataset
from sparekit.data.dataset import ConflictExample, normalize_answer
from sparekit.evaluation.metrics import exact_match
from sparekit.steering.base import make_method
from sparekit.steering.bench.protocol import BenchConfig, cell_params, method_kind, partner, setting_slug
from sparekit.utils.io import read_json
from steer_fold_report import finished_folds


def contains(pred: str, golds: list[str]) -> bool:
    """Whether any normalised gold is a whole-word span of the normalised prediction."""
    words = f" {normalize_answer(pred)} "
    return any(norm and f" {norm} " in words for norm in map(normalize_answer, golds))


def hit(pred: str, example: ConflictExample, context: str, toward: str, by: str) -> bool:
    """The benchmark's hit (``by="em"``), or by containment with the other side's answer absent."""
    target = example.org_answer if context == "org" or toward == "memory" else example.sub_answer
    if by == "em":
        return exact_match(pred, target)
    other = example.sub_answer if target is example.org_answer else example.org_answer
    return contains(pred, target) and (context == "org" or not contains(pred, other))


def fold_scores(folder: Path, output, split: str, labels: list[str], rows: dict[str, ConflictExample]) -> dict:
    """Per label: {by: [EM_M, EM_C, no conflict]} on one fold, and the unsteered long-answer share."""
    results = read_json(folder / output("results.json"))
    scores = {}
    for label in labels:
        tuned, out = results["methods"][label], {"em": [], "contains": []}
        partner_tuned = tuned.get("tuned_partner")
        directional = make_method(method_kind(label)[0]).directional
        for by in out:
            free = []
            for toward in ("memory", "context"):  # the tables' order: EM_M, EM_C
                setting = tuned["tuned"][toward]
                other = partner(label)[0]
                params = cell_params(label, setting["params"],
                                     partner_tuned[toward]["strength"] if other else None)
                for context in ("sub", "org"):
                    way = toward if directional else "any"
                    path = folder / "generations" / split / \
                        f"{setting_slug(label, params, setting['strength'])}-seed42-{context}-{way}.jsonl"
                    cells = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
                    hits = [hit(c["prediction"], rows[c["id"].rsplit(":", 1)[0]], context, toward, by) for c in cells]
                    (free if context == "org" else out[by]).append(float(np.mean(hits)))
            out[by].append(float(np.mean(free)))
        scores[label] = out
    none = folder / "generations" / split / "none-default-None-seed42-org-any.jsonl"
    answers = [json.loads(line) for line in none.read_text(encoding="utf-8").splitlines()]
    long = np.mean([len(normalize_answer(a["prediction"])) > max(map(len, map(normalize_answer,
                    rows[a["id"].rsplit(":", 1)[0]].org_answer))) for a in answers])
    return {"scores": scores, "long_share": float(long)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--test-format", default="three_shot")
    parser.add_argument("--methods", default="none,cad,adacad,spare")
    parser.add_argument("--dataset", default="broad")
    args = parser.parse_args()
    config = BenchConfig(test_format=args.test_format)
    labels = args.methods.split(",")
    rows = {ex.id: ex for ex in load_dataset(args.dataset)}
    folds = {fold: fold_scores(args.run / f"held-out-{fold}", config.output, config.test_split, labels, rows)
             for fold in finished_folds(args.run, labels, config.output)}
    print(f"{args.test_format}: {len(folds)} folds; unsteered no-conflict answers longer than the gold: "
          f"{100 * np.mean([f['long_share'] for f in folds.values()]):.1f} % (mean of folds)\n")
    print("| method | EM: EM_M / EM_C / no conflict | containment: EM_M / EM_C / no conflict |\n|---|---|---|")
    for label in labels:
        cells = [" / ".join(f"{100 * np.mean([f['scores'][label][by][i] for f in folds.values()]):.1f}"
                            for i in range(3)) for by in ("em", "contains")]
        print(f"| {label} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
