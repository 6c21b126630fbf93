"""Where the recall reading fires on true contexts (the gate's false fires, what costs EM without conflict): per
relation, and whether either closed-book answer was the memorised one (issue 29; BENCHMARKS.md, "Fifth design
round"). Reads recall_design.py's caches (the capped items and both prompts' answers); generates nothing new.

    python benchmarks/recall_false_fires.py --run runs/broad-probe --answers runs/recall-knn
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import sparekit
from bench_detectors import capped_items
from recall_design import cached_answers, decisions
from sparekit.data import load_dataset
from sparekit.data.formats import prompt_format
from sparekit.evaluation.metrics import exact_match
from sparekit.probes.experiment import PROMPT_SEED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="the memorised-item cache recall_design.py used")
    parser.add_argument("--answers", type=Path, required=True, help="recall_design.py's answers cache folder")
    parser.add_argument("--per-relation", type=int, default=80)
    parser.add_argument("--candidates", default="mixed6,mixed6+knn3", help="the answers read together")
    parser.add_argument("--format", default="three_shot", help="the prompt format (the reading is the same in each)")
    args = parser.parse_args()
    lm = sparekit.load_model("default")
    data = load_dataset("broad", seed=PROMPT_SEED)
    items = capped_items(lm, data, args.run, args.per_relation)
    found = [cached_answers(lm, name, items, args.answers) for name in args.candidates.split(",")]
    fired = [ex for ex, v in zip(items, decisions(data, items, found, prompt_format(args.format, lm.tokenizer)))
             if v == 1.0]  # the org (true-context) half comes first
    print(f"{len(fired)} of {len(items)} true contexts fire: {Counter(ex.relation for ex in fired).most_common()}")
    why = Counter()
    for ex in fired:
        answers = [f[ex.id]["closed"] for f in found]
        why["an answer memorised, not found in the context" if any(exact_match(a, list(ex.org_answer))
                                                                   for a in answers) else "every answer wrong"] += 1
        print(f"  {ex.relation:<22} {ex.question[:58]:<58} answers {answers}  gold {list(ex.org_answer)[:2]}")
    print(dict(why))


if __name__ == "__main__":
    main()
