"""The recall detector's closed-book question, candidates scored on dev relations only (issue 29; BENCHMARKS.md,
"The recall detector", second design round).

Per candidate prompt, one short closed-book generation per dev item (cached under ``--out/<candidate>.json``),
then :func:`~sparekit.probes.training_free.unrecalled` on the item's org (no conflict) and sub (conflict) prompts
in every format of ``--formats``: accuracy, false-positive rate, conflicts found, the recall score's AUROC, and the
share of items whose closed-book answer is the memorised one. ``or:A+B`` rows OR two candidates' decisions (named
if the context names either answer; two generations per prompt) at no extra generation here. ``twin`` (in ``--or``
only) is the prompt's own closed-book twin in each format (what the disagreement detector generates), answered once
per format (``twin-<format>.json``); a twin's answer counts only where it recalls at most ``--twin-words`` words beyond
the question's (a prompt in the user's format may answer in a sentence, whose every word would be looked up).

    python benchmarks/recall_design.py --run runs/broad-probe --out runs/recall-design2 --per-relation 80 \\
      --relations product,weekday_abbreviation,holiday_month,unit_symbol
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from itertools import product

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

import sparekit
from bench_detectors import K_SHOT, _auroc, capped_items, capped_run_parser
from sparekit.data import ConflictDataset, load_dataset
from sparekit.data.formats import QABlocks, Shot, prompt_format
from sparekit.data.prompts import build_prompt, item_demos
from sparekit.evaluation.generation import batches, greedy_generate
from sparekit.evaluation.harness import MAX_NEW_TOKENS, condition_prompts
from sparekit.evaluation.metrics import exact_match
from sparekit.probes.experiment import PROMPT_SEED
from sparekit.probes.recall_bank import default_bank
from sparekit.probes.training_free import (RECALL_SHOTS, _recalled_words, _words, recall_prompts, recall_score,
                                           unrecalled)
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


class AnswerSteps(LogitsProcessor):
    """Each decoding step's greedy token and its log-probability (placed last, it reads the scores greedy decoding
    picks from); changes nothing. :meth:`answer` keeps one row's steps before its answer ends (a token holding a
    newline, or a special token): the tokens of the answer ``greedy_generate`` cuts at its first newline."""

    def __init__(self, tokenizer):
        self.tokenizer, self.steps = tokenizer, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        top = torch.log_softmax(scores.float(), -1).max(-1)
        self.steps.append((top.values.cpu(), top.indices.cpu()))
        return scores

    def answer(self, row: int) -> list[float]:
        found = []
        for values, ids in self.steps:
            token = int(ids[row])
            if token in self.tokenizer.all_special_ids or "\n" in self.tokenizer.decode([token]):
                break
            found.append(float(values[row]))
        return found


class PerFormat(dict):
    """A ``twin`` candidate's answers: per format name, the per-item rows of :func:`cached_answers`."""


@cache
def broad_data() -> ConflictDataset:
    """The corpus the items' demonstrations are drawn from (as bench_detectors' twins)."""
    return load_dataset("broad", seed=PROMPT_SEED)


def twin_prompts(data: ConflictDataset, items: ConflictDataset, fmt) -> list[str]:
    """Each item's closed-book twin in ``fmt``: its prompt without the passage, the demonstrations kept."""
    k_shot = K_SHOT if fmt.shots else 0
    return [build_prompt(ex, None, item_demos(ex, data, PROMPT_SEED, k_shot, fmt=fmt), fmt) for ex in items]


def candidate_prompts(name: str, items: ConflictDataset, tokenizer=None) -> list[str]:
    """A candidate's closed-book prompts: ``instruction``, :data:`INSTRUCTION` before the bare block; otherwise
    :func:`recall_prompts` with the shots its ``+``-joined parts name in order, each a :data:`SHOT_CANDIDATES` name
    or ``knnK``: the K solved questions of the broad corpus nearest the item's question in form, drawn from the
    corpus *without the item's relation* (as if it were held out), or ``knnallK`` from the whole corpus (the
    library's :func:`~sparekit.probes.training_free.recall_answers`, for a relation in the corpus); ``twin-<format>``:
:func:`twin_prompts`."""
    if name == "instruction":
        return [INSTRUCTION + QABlocks().block(ex.question, ()) for ex in items]
    if name.startswith("twin-"):
        return twin_prompts(broad_data(), items, prompt_format(name.removeprefix("twin-"), tokenizer))
    bank = default_bank()
    held_out = cache(lambda relation: bank.without([relation]))  # built once per relation, not per item

    def shots(part: str, ex) -> list[Shot]:
        if part.startswith("knnall"):  # the whole bank, the item's relation included: what the library asks
            return bank.nearest(ex.question, int(part.removeprefix("knnall")))
        if part.startswith("knn"):
            return held_out(ex.relation).nearest(ex.question, int(part.removeprefix("knn")))
        return list(SHOT_CANDIDATES[part])

    return [recall_prompts([ex.question], [s for part in name.split("+") for s in shots(part, ex)])[0]
            for ex in items]


def candidate_answers(lm, name: str, items: ConflictDataset, batch_size: int = 8,
                      prompts: dict[str, str] | None = None) -> list[dict]:
    """Per item, a candidate's closed-book answer (:func:`candidate_prompts`, or ``prompts`` by item id), its
    first-token probability (as :func:`recall_answers`) and its tokens' log-probabilities."""
    prompts = candidate_prompts(name, items, lm.tokenizer) if prompts is None else [prompts[ex.id] for ex in items]
    rows = []
    for chunk in batches(prompts, batch_size):
        steps, first = AnswerSteps(lm.tokenizer), []
        answers = greedy_generate(lm, list(chunk), MAX_NEW_TOKENS, batch_size, first_step=first,
                                  logits_processor=LogitsProcessorList([steps]))
        rows += [{"closed": a, "p_first": float(p), "log_probs": steps.answer(i)}
                 for i, (a, p) in enumerate(zip(answers, torch.cat(first).max(-1).values.exp().tolist()))]
    return rows


def cached_answers(lm, name: str, items: ConflictDataset, out, prompts: dict[str, str] | None = None
                   ) -> dict[str, dict]:
    """Per item id the candidate's :func:`candidate_answers` row (cached in one file per candidate; only the items
    it lacks are generated); ``prompts``: each item's prompt by id, for a candidate :func:`candidate_prompts` cannot
    build from the item alone."""
    path = out / f"{name}.json"
    rows = json.loads(path.read_text()) if path.is_file() else {}
    missing = [ex for ex in items if ex.id not in rows]
    if missing:
        rows.update(zip([ex.id for ex in missing], candidate_answers(lm, name, missing, prompts=prompts)))
        atomic_write_json(path, rows)
    return rows


def confidence(row: dict, measure: str) -> float:
    """How sure the closed-book answer is: ``first`` its first token's probability (today's), ``mean`` the geometric
    mean of its tokens' probabilities, ``min`` the least likely token's (an empty answer: its first token's)."""
    log_probs = row["log_probs"]
    if measure == "first" or not log_probs:
        return row["p_first"]
    return float(np.exp(np.mean(log_probs) if measure == "mean" else np.min(log_probs)))


def decisions(data: ConflictDataset, items: ConflictDataset, found: list[dict[str, dict]], fmt,
              twin_words: int = 1) -> np.ndarray:
    """``unrecalled`` on the org then the sub prompts of ``items`` in ``fmt`` (twins as bench_detectors'), given each
    item's answers of every candidate in ``found``, read together as the library reads its two answers (a twin's as
    :func:`brief` keeps it)."""
    twins = twin_prompts(data, items, fmt)
    closed = [tuple(brief(answers[fmt.name][ex.id]["closed"], ex.question, twin_words)
                    if isinstance(answers, PerFormat) else answers[ex.id]["closed"] for answers in found)
              for ex in items]
    questions = [ex.question for ex in items]
    prompts = {c: condition_prompts(data, c, PROMPT_SEED, K_SHOT, fmt=fmt) for c in ("org", "sub")}
    return np.concatenate([unrecalled(closed, questions, [prompts[c][ex.id] for ex in items], twins)
                           for c in ("org", "sub")])


def brief(answer: str, question: str, words: int) -> str:
    """``answer``, or nothing (an answer that recalls nothing, which ``unrecalled`` leaves to the others) where it
    recalls more than ``words`` words beyond the question's."""
    return answer if len(_recalled_words(answer, set(_words(question)))[0]) <= words else ""


def unrecalled_rows(data: ConflictDataset, items: ConflictDataset, found: list[dict[str, dict]],
                    formats: list, twin_words: int = 1) -> np.ndarray:
    """``[formats, 2 n]``: :func:`decisions` per format (several candidates: a conflict where the context names none
    of their answers that recall something)."""
    return np.stack([decisions(data, items, found, fmt, twin_words) for fmt in formats])


def floored_score(value: np.ndarray, conf: np.ndarray, floor: float, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """The decision (unrecalled and a closed-book answer surer than ``floor``) and a score above 0.5 exactly where it
    fires. ``spread``: :func:`recall_score` of the decision (an unsure unrecalled answer reads as a recalled one);
    ``ranked``: unrecalled answers keep their order by confidence, the floor at 0.5."""
    fired = value * (conf > floor)
    if rule == "spread":
        return fired, recall_score(fired, conf)
    above = 0.5 + 0.5 * (conf - floor) / (1 - floor)
    below = 0.5 * conf / floor if floor > 0 else above
    return fired, np.where(value == 1, np.where(conf > floor, above, below), 0.5 - 0.5 * conf)


def score(items: ConflictDataset, found: list[dict[str, dict]], value: np.ndarray, mask: np.ndarray,
          floor: float = 0.0, measure: str = "first", rule: str = "spread") -> dict:
    """Accuracy, false positives, conflicts found, AUROC (confidence: the first candidate's) and memorised answers
    recovered (by any of ``found``) on the items in ``mask``, pooled over the formats of ``value``."""
    conf = np.array([confidence(found[0][ex.id], measure) for ex in items])
    fired, scores = floored_score(value, np.tile(conf, 2), floor, rule)
    keep, y = np.tile(mask, 2), np.repeat([0.0, 1.0], len(items))
    pred, scores, ys = fired[:, keep].ravel(), scores[:, keep].ravel(), np.tile(y[keep], len(value))
    recovered = [any(exact_match(answers[ex.id]["closed"], list(ex.org_answer)) for answers in found
                     if not isinstance(answers, PerFormat)) for ex, kept in zip(items, mask) if kept]
    return {"items": int(mask.sum()), "accuracy": float(np.mean(pred == ys)),
            "false_positive": float(np.mean(pred[ys == 0])), "found": float(np.mean(pred[ys == 1])),
            "auroc": _auroc(ys, scores), "recovered": float(np.mean(recovered))}


def scored(items: ConflictDataset, found: list[dict[str, dict]], value: np.ndarray, floor: float, measure: str,
           rule: str, relations: Sequence[str] = ()) -> dict:
    """:func:`score` on every item, and with ``relations`` on each relation's items apart (``by_relation``)."""
    row = score(items, found, value, np.ones(len(items), bool), floor, measure, rule)
    if relations:
        relation = np.array([ex.relation for ex in items])
        row["by_relation"] = {r: score(items, found, value, relation == r, floor, measure, rule) for r in relations}
    return row


def main() -> None:
    parser = capped_run_parser(__doc__.splitlines()[0], "a `sparekit probe --dataset broad` run directory")
    parser.add_argument("--relations", required=True, help="comma-separated dev relations")
    parser.add_argument("--candidates", default="neutral3,mixed6,mixed3,instruction")
    parser.add_argument("--or", dest="ors", default="", help="comma-separated A|B pairs of candidates to OR")
    parser.add_argument("--formats", default="three_shot,zero_shot,rag,llamaindex")
    parser.add_argument("--floors", default="0", help="comma-separated confidence floors: fire only where the "
                        "closed-book answer is surer than the floor")
    parser.add_argument("--confidence", default="first", help="comma-separated measures: first, mean, min")
    parser.add_argument("--rules", default="spread", help="comma-separated score rules: spread, ranked")
    parser.add_argument("--by-relation", action="store_true", help="also each relation's scores")
    parser.add_argument("--twin-words", type=int, default=1, help="a twin's answer counts where it recalls at most "
                        "this many words beyond the question's")
    args = parser.parse_args()
    floors = [float(f) for f in args.floors.split(",")]
    if not all(0 <= f < 1 for f in floors):
        raise SystemExit(f"--floors: each floor must be in [0, 1), got {args.floors}")
    lm = sparekit.load_model("default")
    data = load_dataset("broad", seed=PROMPT_SEED)
    capped = capped_items(lm, data, args.run, args.per_relation)
    relations = args.relations.split(",")
    items = capped.subset([i for i, ex in enumerate(capped) if ex.relation in relations])
    formats = [prompt_format(f, lm.tokenizer) for f in args.formats.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.candidates.split(",")
    found = {name: PerFormat({fmt.name: cached_answers(lm, f"twin-{fmt.name}", items, args.out) for fmt in formats})
             if name == "twin" else cached_answers(lm, name, items, args.out)
             for name in {n for name in names + args.ors.split(",") for n in name.split("|") if n}}
    rows = {name: [found[name]] for name in names if name != "twin"}
    rows.update({f"or:{pair}": [found[name] for name in pair.split("|")] for pair in filter(None, args.ors.split(","))})
    table = {}
    for name, answers in rows.items():
        value = unrecalled_rows(data, items, answers, formats, args.twin_words)
        for measure, floor, rule in product(args.confidence.split(","), floors, args.rules.split(",")):
            key = f"{name} {measure} floor={floor:g} {rule}"
            table[key] = scored(items, answers, value, floor, measure, rule, relations if args.by_relation else ())
            table[key]["by_format"] = {fmt.name: scored(items, answers, value[i:i + 1], floor, measure, rule,
                                                        relations if args.by_relation else ())
                                       for i, fmt in enumerate(formats)}
    atomic_write_json(args.out / f"table-{'-'.join(relations)}.json", table)
    for name, row in table.items():
        print(name, json.dumps({k: v for k, v in row.items() if not k.startswith("by_")}))
        for fmt, cell in row["by_format"].items():
            print(f"  {fmt}", json.dumps({k: v for k, v in cell.items() if not k.startswith("by_")}))

if __name__ == "__main__":
    main()
