"""The recall detector's closed-book question, candidates scored on dev relations only (issue 29; BENCHMARKS.md,
"The recall detector", second design round).

Per candidate prompt, one short closed-book generation per dev item (cached under ``--out/<candidate>.json``),
then :func:`~sparekit.probes.training_free.unrecalled` on the item's org (no conflict) and sub (conflict) prompts
in every format of ``--formats``: accuracy, false-positive rate, conflicts found, the recall score's AUROC, and the
share of items whose closed-book answer is the memorised one. ``or:A+B`` rows OR two candidates' decisions (named
if the context names either answer; two generations per prompt) at no extra generation here.

    python benchmarks/recall_design.py --run runs/broad-probe --out runs/recall-design2 --per-relation 80 \\
      --relations product,weekday_abbreviation,holiday_month,unit_symbol
"""

from __future__ import annotations

import json

import numpy as np

import sparekit
from bench_detectors import K_SHOT, _auroc, capped_items, capped_run_parser
from sparekit.data import ConflictDataset, load_dataset
from sparekit.data.formats import QABlocks, Shot, prompt_format
from sparekit.data.prompts import build_prompt, item_demos
from sparekit.evaluation.harness import condition_prompts
from sparekit.evaluation.metrics import exact_match
from sparekit.probes.experiment import PROMPT_SEED
from sparekit.probes.training_free import (RECALL_SHOTS, closed_book_answers, recall_answers, recall_score,
                                           unrecalled)
from sparekit.utils.arrays import to_numpy
from sparekit.utils.io import atomic_write_json

#: round 1's choice (the shipped shots until round 2): three general-knowledge questions outside every relation
NEUTRAL_SHOTS = (Shot("Who wrote Romeo and Juliet?", None, "William Shakespeare"),
                 Shot("What is the largest planet in the solar system?", None, "Jupiter"),
                 Shot("Which animal is known as the king of the jungle?", None, "the lion"))
#: a zero-shot short-answer instruction before the bare question block
INSTRUCTION = ("Answer the question with the shortest correct answer: a word, a name, a number, an abbreviation or "
               "a symbol.\n\n")
#: mixed6: several answer types, today's :data:`RECALL_SHOTS` (round 2's choice); mixed3 its first three
SHOT_CANDIDATES = {"neutral3": NEUTRAL_SHOTS, "mixed6": RECALL_SHOTS, "mixed3": RECALL_SHOTS[:3],
                   "neutral3+mixed6": NEUTRAL_SHOTS + RECALL_SHOTS}


def candidate_answers(lm, name: str, questions: list[str]) -> tuple[list[str], np.ndarray]:
    """Closed-book answers and first-token probabilities of one candidate (``instruction``: :data:`INSTRUCTION`
    before the bare block; the others :func:`recall_answers` with their shots)."""
    if name != "instruction":
        return recall_answers(lm, questions, shots=SHOT_CANDIDATES[name])
    answers, log_probs = closed_book_answers(lm, [INSTRUCTION + QABlocks().block(q, ()) for q in questions])
    return answers, to_numpy(log_probs.max(-1).values.exp()).astype(np.float64)


def cached_answers(lm, name: str, items: ConflictDataset, out) -> dict[str, dict]:
    """Per item id the candidate's closed-book answer and first-token probability (cached in one file per
    candidate; only the items it lacks are generated)."""
    path = out / f"{name}.json"
    rows = json.loads(path.read_text()) if path.is_file() else {}
    missing = [ex for ex in items if ex.id not in rows]
    if missing:
        answers, top = candidate_answers(lm, name, [ex.question for ex in missing])
        rows.update({ex.id: {"closed": a, "p_first": float(p)} for ex, a, p in zip(missing, answers, top)})
        atomic_write_json(path, rows)
    return rows


def decisions(data: ConflictDataset, items: ConflictDataset, answers: dict[str, dict], fmt) -> np.ndarray:
    """``unrecalled`` on the org then the sub prompts of ``items`` in ``fmt`` (twins as bench_detectors')."""
    k_shot = K_SHOT if fmt.shots else 0
    twins = [build_prompt(ex, None, item_demos(ex, data, PROMPT_SEED, k_shot, fmt=fmt), fmt) for ex in items]
    closed, questions = [answers[ex.id]["closed"] for ex in items], [ex.question for ex in items]
    prompts = {c: condition_prompts(data, c, PROMPT_SEED, K_SHOT, fmt=fmt) for c in ("org", "sub")}
    return np.concatenate([unrecalled(closed, questions, [prompts[c][ex.id] for ex in items], twins)
                           for c in ("org", "sub")])


def score(data: ConflictDataset, items: ConflictDataset, found: list[dict[str, dict]], formats: list) -> dict:
    """Accuracy, false positives, conflicts found, AUROC (of the first candidate's probability) and memorised
    answers recovered (by any of ``found``), pooled over ``formats``; several candidates are OR-ed."""
    n = len(items)
    y = np.concatenate([np.zeros(n), np.ones(n)])
    pred, scores, ys = [], [], []
    for fmt in formats:
        value = np.min([decisions(data, items, answers, fmt) for answers in found], axis=0)
        confidence = np.tile([found[0][ex.id]["p_first"] for ex in items], 2)
        pred.append(value), scores.append(recall_score(value, confidence)), ys.append(y)
    pred, scores, ys = np.concatenate(pred), np.concatenate(scores), np.concatenate(ys)
    recovered = [any(exact_match(answers[ex.id]["closed"], list(ex.org_answer)) for answers in found) for ex in items]
    return {"items": n, "accuracy": float(np.mean(pred == ys)), "false_positive": float(np.mean(pred[ys == 0])),
            "found": float(np.mean(pred[ys == 1])), "auroc": _auroc(ys, scores), "recovered": float(np.mean(recovered))}


def main() -> None:
    parser = capped_run_parser(__doc__.splitlines()[0], "a `sparekit probe --dataset broad` run directory")
    parser.add_argument("--relations", required=True, help="comma-separated dev relations")
    parser.add_argument("--candidates", default="neutral3,mixed6,mixed3,instruction")
    parser.add_argument("--or", dest="ors", default="", help="comma-separated A+B pairs of candidates to OR")
    parser.add_argument("--formats", default="three_shot,zero_shot,rag,llamaindex")
    args = parser.parse_args()
    lm = sparekit.load_model("default")
    data = load_dataset("broad", seed=PROMPT_SEED)
    capped = capped_items(lm, data, args.run, args.per_relation)
    relations = args.relations.split(",")
    items = capped.subset([i for i, ex in enumerate(capped) if ex.relation in relations])
    formats = [prompt_format(f, lm.tokenizer) for f in args.formats.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.candidates.split(",")
    found = {name: cached_answers(lm, name, items, args.out) for name in names}
    table = {name: score(data, items, [found[name]], formats) for name in names}
    for pair in filter(None, args.ors.split(",")):
        table[f"or:{pair}"] = score(data, items, [found[name] for name in pair.split("+")], formats)
    atomic_write_json(args.out / f"table-{'-'.join(relations)}.json", table)
    for name, row in table.items():
        print(name, json.dumps(row))


if __name__ == "__main__":
    main()
