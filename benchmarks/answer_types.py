"""How often a steered method answers with *another relation's* answer, per held-out relation.

A leave-one-relation-out run fits each method on the other relations; an edit that carries their
answer type (a country where a capital is asked) shows up here. Reads the cached test cells of a
``sparekit bench steer --split-by relation`` run: for each held-out relation and method, the
conflict answers steered toward memory at the dev-tuned setting (the unsteered ones for ``none``;
every test seed), counted as "other" when they exactly match an answer of another relation of the
dataset and none of their own relation.

    python benchmarks/answer_types.py runs/loro1 --methods none,actadd,cad,spare
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparekit.data import load_dataset
from sparekit.evaluation.metrics import normalize_answer
from sparekit.steering.bench.protocol import cell_params, setting_slug


def tuned_prefix(label: str, result: dict) -> str:
    """The file-name prefix of a method's dev-tuned test cells toward memory (a combined label, ``spare+cad``,
    also names its partner's dev-tuned strength)."""
    choice = result["tuned"]["memory"]
    partner_strength = result["tuned_partner"]["memory"]["strength"] if "tuned_partner" in result else None
    return setting_slug(label, cell_params(label, choice["params"], partner_strength), choice["strength"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a --split-by relation run directory")
    parser.add_argument("--methods", default="none,actadd,cad,spare")
    parser.add_argument("--dataset", default="default")
    args = parser.parse_args()
    data = load_dataset(args.dataset)
    answers: dict[str, set[str]] = {}
    for ex in data:
        answers.setdefault(ex.relation, set()).update(normalize_answer(a) for a in ex.org_answer)
    print("| held-out relation | " + " | ".join(args.methods.split(",")) + " |")
    print("|---|" + "---|" * len(args.methods.split(",")))
    for folder in sorted(args.run.glob("held-out-*")):
        relation = folder.name.removeprefix("held-out-")
        others = set().union(*(a for r, a in answers.items() if r != relation)) - answers[relation]
        results = json.loads((folder / "results.json").read_text())["methods"]
        cells = []
        for label in args.methods.split(","):
            way = "any" if label == "none" else "memory"
            prefix = tuned_prefix(label, results[label])
            files = sorted((folder / "generations" / "test").glob(f"{prefix}-seed*-sub-{way}.jsonl"))
            if not files:
                raise SystemExit(f"{folder}: no test cells of {label}'s dev-tuned setting; "
                                 "run the benchmark to the end first")
            preds = [json.loads(line)["prediction"] for f in files for line in f.read_text().splitlines()]
            hits = sum(normalize_answer(p) in others for p in preds)
            cells.append(f"{hits} / {len(preds)}")
        print(f"| {relation} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
