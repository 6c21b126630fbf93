"""Is a held-out prompt format's EM about the answer's source or its form? Rescores a leave-one-out run's test
cells (``bench steer --test-format``) by containment beside EM.

A zero-shot prompt (``rag``, ``llamaindex``, ``zero_shot``) lets a base model answer in a sentence ("The Taka is
the official currency of Bangladesh."), which EM counts as a miss whatever its source. *Containment* counts a hit
where the target answer (any alias, SQuAD-normalised) is a whole-word span of the normalised prediction and, on a
conflict prompt, the other side's answer is not: the answer's source with its form set aside. Per method, the
mean over folds of each fold's score (the tuned setting of each direction and every seed, as the run's
``results*.json``; EM is :meth:`Cells.hit`, the benchmark's own), both ways, and the share of unsteered answers on
the no-conflict prompts that are longer than every gold alias.

    python benchmarks/answer_form.py runs/broad-relation --test-format rag \
      --methods none,icl,cad,adacad,cad+recall,adacad+recall,actadd,spare,spare+recall
    python benchmarks/answer_form.py runs/broad-relation-full --methods none --paired spare+cad+recall,cad+recall

``--paired A,B`` also sorts A's answers on the conflicts only B answers right (:data:`LOSS_KINDS`): the other
side's answer, or a change of the answer's form or type.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from sparekit.data import load_dataset
from sparekit.data.dataset import ConflictExample, normalize_answer
from sparekit.errors import SparekitError
from sparekit.steering.base import DIRECTIONS, SteeringPrompt, make_method
from sparekit.steering.bench.cells import Cells
from sparekit.steering.bench.protocol import BenchConfig, cell_params, method_kind, partner
from sparekit.utils.io import read_json
from steer_fold_report import finished_folds


def contains(pred: str, golds: list[str]) -> bool:
    """Whether any normalised gold is a whole-word span of the normalised prediction."""
    words = f" {normalize_answer(pred)} "
    return any(norm and f" {norm} " in words for norm in map(normalize_answer, golds))


def contained_hit(pred: str, prompt: SteeringPrompt, toward: str) -> bool:
    """:meth:`Cells.hit` by containment: the target named, and on a conflict prompt the other side's answer not."""
    example = prompt.example
    target = example.org_answer if prompt.context == "org" or toward == "memory" else example.sub_answer
    other = example.sub_answer if target is example.org_answer else example.org_answer
    return contains(pred, target) and (prompt.context == "org" or not contains(pred, other))


def read_cell(path: Path, context: str, rows: dict[str, ConflictExample]) -> list[tuple[str, SteeringPrompt]]:
    """One cell file's (prediction, prompt) per item; the prompt carries the item's row (its answers) only."""
    return [(c["prediction"], SteeringPrompt(rows[c["id"].rsplit(":", 1)[0]], context, ()))  # type: ignore
            for c in map(json.loads, path.read_text(encoding="utf-8").splitlines())]


def tuned_cells(folder: Path, results: dict, split: str, label: str, rows: dict[str, ConflictExample],
                cells: Cells) -> dict[tuple[int, str, str], list[tuple[str, SteeringPrompt]]]:
    """A label's test cells on one fold at its tuned setting, by (seed, context, toward): (prediction, prompt) per
    item, the cells the run's ``results*.json`` scored."""
    tuned, other = results["methods"][label], partner(label)[0]
    directional = make_method(method_kind(label)[0]).directional
    found = {}
    for seed in results["seeds"]:
        for toward in DIRECTIONS:
            setting = tuned["tuned"][toward]
            params = cell_params(label, setting["params"],
                                 tuned["tuned_partner"][toward]["strength"] if other else None)
            for context in ("sub", "org"):
                path = cells.path(split, label, params, setting["strength"], seed, context,
                                  toward if directional else "any")
                found[seed, context, toward] = read_cell(path, context, rows)
    return found


def fold_scores(folder: Path, output, split: str, labels: list[str], rows: dict[str, ConflictExample],
                context_match: str = "answer") -> dict:
    """Per label: {"em" | "contains": [EM_M, EM_C, no conflict]} on one fold, each the mean over the run's seeds of
    its tuned cells (as ``results*.json`` scores them), and the unsteered long-answer share."""
    results = read_json(folder / output("results.json"))
    cells = Cells(None, folder, 1, context_match)  # scoring and file names only: no model
    scorers = {"em": cells.hit, "contains": contained_hit}
    scores = {}
    for label in labels:
        answers = tuned_cells(folder, results, split, label, rows, cells)
        per_seed = {by: [] for by in scorers}
        for seed in results["seeds"]:
            for by, scorer in scorers.items():  # the tables' order: EM_M, EM_C, no conflict (both directions' mean)
                s = {(c, t): np.mean([scorer(a, p, t) for a, p in answers[seed, c, t]])
                     for c in ("sub", "org") for t in DIRECTIONS}
                per_seed[by].append([s["sub", "memory"], s["sub", "context"],
                                     (s["org", "memory"] + s["org", "context"]) / 2])
        scores[label] = {by: [float(x) for x in np.mean(values, 0)] for by, values in per_seed.items()}
    unsteered = read_cell(cells.path(split, "none", {}, None, results["seeds"][0], "org", "any"), "org", rows)
    long = np.mean([len(normalize_answer(a)) > max(len(normalize_answer(g)) for g in p.example.org_answer)
                    for a, p in unsteered])
    return {"scores": scores, "long_share": float(long)}


def paired_items(folder: Path, output, split: str, pair: tuple[str, str], rows: dict[str, ConflictExample],
                 context_match: str = "answer") -> dict[str, list[tuple[str, bool, bool, SteeringPrompt]]]:
    """Per direction, (``pair[0]``'s prediction, whether it is right, whether ``pair[1]``'s is, the prompt) for every
    conflict prompt of the fold and seed, by the benchmark's EM, the two labels' cells paired by item."""
    results = read_json(folder / output("results.json"))
    cells = Cells(None, folder, 1, context_match)
    a, b = (tuned_cells(folder, results, split, label, rows, cells) for label in pair)
    items: dict[str, list] = {}
    for toward in DIRECTIONS:
        items[toward] = []
        for key in (k for k in a if k[1:] == ("sub", toward)):
            theirs = {q.example.id: y for y, q in b[key]}  # paired by item, not by position in the file
            if set(theirs) != {p.example.id for _, p in a[key]}:
                raise SparekitError(f"{folder}: {pair[0]} and {pair[1]} were tested on different items (seed "
                                    f"{key[0]}, toward {toward})", "compare labels of one run")
            items[toward] += [(x, cells.hit(x, p, toward), cells.hit(theirs[p.example.id], p, toward), p)
                              for x, p in a[key]]
    return items


def paired_counts(folder: Path, output, split: str, pair: tuple[str, str], rows: dict[str, ConflictExample],
                  context_match: str = "answer") -> dict[str, list[int]]:
    """Per direction, [items only ``pair[0]`` answers right, items only ``pair[1]`` does] over the fold's
    conflict prompts and seeds, by the benchmark's EM: the discordant pairs of a sign test."""
    return discordant(paired_items(folder, output, split, pair, rows, context_match))


def discordant(items: dict[str, list[tuple[str, bool, bool, SteeringPrompt]]]) -> dict[str, list[int]]:
    """Per direction, [only the first right, only the second right] of :func:`paired_items`."""
    return {toward: [sum(x and not y for _, x, y, _ in found), sum(y and not x for _, x, y, _ in found)]
            for toward, found in items.items()}


#: what a method answered where it lost (:func:`loss_kind`), in the order they are tried
LOSS_KINDS = ("the other side's answer", "a word of the question", "a phrase holding the target",
              "another relation's answer", "something else")


def loss_kind(prediction: str, prompt: SteeringPrompt, toward: str, other_relations: set[str]) -> str:
    """Which of :data:`LOSS_KINDS` a wrong conflict answer is: the side not asked for (the context's answer toward
    memory, the memorised one toward context), the question's own words (its subject: "Egypt" for the capital of
    Egypt), a longer phrase holding the target, an answer of another relation of the corpus, or none of these."""
    said = normalize_answer(prediction)
    target, other = ((prompt.example.org_answer, prompt.example.sub_answer) if toward == "memory" else
                     (prompt.example.sub_answer, prompt.example.org_answer))
    if any(normalize_answer(a) == said for a in other):
        return LOSS_KINDS[0]
    if said and said in normalize_answer(prompt.example.question):
        return LOSS_KINDS[1]
    if any(normalize_answer(a) in said for a in target):
        return LOSS_KINDS[2]
    return LOSS_KINDS[3] if said in other_relations else LOSS_KINDS[4]


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test on the discordant pairs."""
    n = wins + losses
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2 ** n) if n else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--test-format", default="three_shot")
    parser.add_argument("--methods", default="none,cad,adacad,spare")
    parser.add_argument("--dataset", default="broad")
    parser.add_argument("--paired", metavar="A,B", help="also count, item by item, the conflicts only A answers "
                        "right and only B does (EM, tuned cells, every fold and seed), with an exact sign test")
    args = parser.parse_args()
    config = BenchConfig(test_format=args.test_format)
    labels = args.methods.split(",")
    dataset = load_dataset(args.dataset)
    rows = {ex.id: ex for ex in dataset}
    folds = {fold: fold_scores(args.run / f"held-out-{fold}", config.output, config.test_split, labels, rows,
                               dataset.context_match) for fold in finished_folds(args.run, labels, config.output)}
    print(f"{args.test_format}: {len(folds)} folds; unsteered no-conflict answers longer than the gold: "
          f"{100 * np.mean([f['long_share'] for f in folds.values()]):.1f} % (mean of folds)\n")
    print("| method | EM: EM_M / EM_C / no conflict | containment: EM_M / EM_C / no conflict |\n|---|---|---|")
    for label in labels:
        cells = [" / ".join(f"{100 * np.mean([f['scores'][label][by][i] for f in folds.values()]):.1f}"
                            for i in range(3)) for by in ("em", "contains")]
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    if args.paired:
        pair = tuple(args.paired.split(","))
        paired = {fold: paired_items(args.run / f"held-out-{fold}", config.output, config.test_split, pair, rows,
                                     dataset.context_match) for fold in folds}
        counts = [discordant(items) for items in paired.values()]
        print(f"\n| direction | only {pair[0]} right | only {pair[1]} right | sign test p |\n|---|---|---|---|")
        for toward in DIRECTIONS:
            wins, losses = (sum(c[toward][i] for c in counts) for i in (0, 1))
            print(f"| {toward} | {wins} | {losses} | {sign_test(wins, losses):.4f} |")
        print_losses(paired, pair, dataset)


def print_losses(paired: dict[str, dict], pair: tuple[str, str], dataset) -> None:
    """What ``pair[0]`` answered on the conflicts only ``pair[1]`` answers right, by :data:`LOSS_KINDS`, from each
    held-out fold's :func:`paired_items`."""
    kinds = {toward: dict.fromkeys(LOSS_KINDS, 0) for toward in DIRECTIONS}
    for fold, found in paired.items():
        others = {normalize_answer(a) for ex in dataset if ex.relation != fold for a in ex.org_answer}
        for toward, items in found.items():
            for said, right, theirs_right, prompt in items:
                if theirs_right and not right:
                    kinds[toward][loss_kind(said, prompt, toward, others)] += 1
    print(f"\nwhere only {pair[1]} is right, {pair[0]} answered:\n\n| direction | "
          + " | ".join(LOSS_KINDS) + " |\n|---|" + "---|" * len(LOSS_KINDS))
    for toward in DIRECTIONS:
        print(f"| {toward} | " + " | ".join(str(n) for n in kinds[toward].values()) + " |")


if __name__ == "__main__":
    main()
