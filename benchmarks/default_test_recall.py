"""The shipped recall reading on the default dataset's test split (the steering benchmark's, never fitted or tuned on),
in every prompt format: accuracy, AUROC, false positives and conflicts found. The recall half of
``bench_detectors.py --default-test``, without the probe's capture (BENCHMARKS.md, "The recall detector").

    python benchmarks/default_test_recall.py --out runs/default-test-recall
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import sparekit
from bench_detectors import _auroc, cached_recall_answers, recall_signal, signal_rows
from ship_probes import default_splits
from sparekit.data import load_dataset
from sparekit.data.formats import prompt_format
from sparekit.probes.experiment import PROMPT_SEED
from sparekit.utils.io import atomic_write_json

FORMATS = ("three_shot", "zero_shot", "rag", "llamaindex")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="cache of the closed-book passes, and the result")
    args = parser.parse_args()
    lm = sparekit.load_model("default")
    data = load_dataset("default", seed=PROMPT_SEED)
    items = default_splits(lm, args.out)["test"]
    answers = cached_recall_answers(lm, items, args.out)
    y = np.repeat([0, 1], len(items))  # the org (true context) rows, then the sub (conflict) rows
    table = {}
    for name in FORMATS:
        found = recall_signal(data, items, answers, prompt_format(name, lm.tokenizer))
        score = signal_rows(items, found, ["recall"])["recall"]
        table[name] = {"accuracy": float(np.mean((score > 0.5) == y)), "auroc": _auroc(y, score),
                       "false_positive_rate": float(np.mean(score[y == 0] > 0.5)),
                       "conflicts_found": float(np.mean(score[y == 1] > 0.5))}
    result = {"n_items": len(items), "table": table}
    atomic_write_json(args.out / "result.json", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
