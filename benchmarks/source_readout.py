"""Will the model answer from the context or from memory? Training-free readings of the conflict prompt's own pass,
and a small logistic regression over them fitted on other relations (issue 29, the source-prediction goal).

Per memorised item of a capped broad probe run and per prompt format, on its conflict (sub) prompt: the model's
greedy answer (the label: context, memory or other, :func:`~sparekit.evaluation.metrics.answer_source`), and what
the prompt pass shows before any token is generated, read against the recall detector's closed-book answer (one
short generation, :func:`~sparekit.probes.training_free.recall_answers`; it names the memory without the context):

- ``mem_first``: log-probability of the closed-book answer's first token at the last prompt token; ``mem_top``: is it
  the most likely token; ``top``: the most likely token's log-probability (how sure the model is of what comes next);
- ``mem_with`` / ``mem_closed``: the closed-book answer's mean log-probability per token, teacher-forced after the
  conflict prompt and after its closed-book twin (same demonstrations, no passage); ``suppressed`` their difference:
  how far the passage pushes the memory down;
- ``confidence``: the closed-book answer's first-token probability under the recall prompt.

Nothing here needs the context's answer. The reference rows that do (``ctx_first``, ``ctx_with``: the passage's
answer scored the same way) show what knowing it would add; the substituted answer is known in this corpus, not in a
user's prompt. Folds: every relation held out in turn and every format held out in turn; the regression and the
majority label are fitted on the other folds' rows only.

    python benchmarks/source_readout.py --run runs/broad-probe --recall runs/recall-floor/mixed6.json \\
      --out runs/source-readout --per-relation 80
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean

import numpy as np
import torch

import sparekit
from bench_detectors import CHUNK, K_SHOT, _auroc, capped_items, capped_run_parser
from sparekit.data import ConflictDataset, load_dataset
from sparekit.data.formats import prompt_format
from sparekit.data.prompts import build_prompt, item_demos
from sparekit.evaluation.generation import answer_nll, greedy_generate
from sparekit.evaluation.harness import MAX_NEW_TOKENS, condition_prompts
from sparekit.evaluation.metrics import answer_source
from sparekit.probes.experiment import PROMPT_SEED
from sparekit.probes.training_free import recall_answers
from sparekit.steering.output_effect import answer_first_tokens
from sparekit.utils.io import atomic_write_json

#: what the regression reads (none needs the context's answer)
FEATURES = ("mem_first", "mem_top", "top", "mem_with", "mem_closed", "suppressed", "confidence")
#: the reference regression adds the passage's answer, scored as the memory's
REFERENCE = FEATURES + ("ctx_first", "ctx_with", "mem_vs_ctx")


def recall_rows(lm, items: ConflictDataset, path: Path | None) -> dict[str, dict]:
    """Per item id the recall detector's closed-book answer and confidence: read from a recall_design.py cache
    (``{id: {"closed", "p_first"}}``) where given, else generated."""
    if path is not None:
        cached = json.loads(path.read_text())
        if all(ex.id in cached for ex in items):
            return cached
    answers, confidence = recall_answers(lm, [ex.question for ex in items])
    return {ex.id: {"closed": a, "p_first": float(p)} for ex, a, p in zip(items, answers, confidence)}


def readings(lm, data: ConflictDataset, items: ConflictDataset, recalled: dict[str, dict], out: Path,
             name: str) -> dict[str, dict]:
    """Per item id, the sub prompt's answer and readings in format ``name`` (cached per chunk of items)."""
    fmt = prompt_format(name, lm.tokenizer)
    k_shot = K_SHOT if fmt.shots else 0
    prompts = condition_prompts(data, "sub", PROMPT_SEED, K_SHOT, fmt=fmt)
    found: dict[str, dict] = {}
    for start in range(0, len(items), CHUNK):
        path = out / name / f"readout-{start // CHUNK:04d}.json"
        chunk = [items[i] for i in range(start, min(start + CHUNK, len(items)))]
        if path.is_file():
            found.update(json.loads(path.read_text()))
            continue
        texts = [prompts[ex.id] for ex in chunk]
        twins = [build_prompt(ex, None, item_demos(ex, data, PROMPT_SEED, k_shot, fmt=fmt), fmt) for ex in chunk]
        memory, context = [recalled[ex.id]["closed"] for ex in chunk], [ex.sub_answer[0] for ex in chunk]
        first: list[torch.Tensor] = []
        answers = greedy_generate(lm, texts, MAX_NEW_TOKENS, len(chunk), first_step=first)
        log_probs = torch.cat(first)
        mem_ids, ctx_ids = answer_first_tokens(lm, memory), answer_first_tokens(lm, context)
        mem_with, mem_closed = answer_nll(lm, texts, memory, len(chunk)), answer_nll(lm, twins, memory, len(chunk))
        ctx_with = answer_nll(lm, texts, context, len(chunk))
        rows = {}
        for i, ex in enumerate(chunk):
            lp = log_probs[i]
            rows[ex.id] = {"answer": answers[i], "label": answer_source(answers[i], ex),
                           "mem_first": float(lp[mem_ids[i]]), "mem_top": float(lp.argmax() == mem_ids[i]),
                           "top": float(lp.max()), "mem_with": -mem_with[i], "mem_closed": -mem_closed[i],
                           "ctx_first": float(lp[ctx_ids[i]]), "ctx_with": -ctx_with[i]}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, rows)
        found.update(rows)
        print(f"{name} {start + len(chunk)}/{len(items)}", flush=True)
    return found


def feature_rows(items: ConflictDataset, recalled: dict[str, dict], read: dict[str, dict[str, dict]]):
    """The labelled rows (context or memory only): relation, format, label (1 = context) and every reading."""
    rows = []
    for name, by_id in read.items():
        for ex in items:
            r = by_id[ex.id]
            if r["label"] == "other":
                continue
            values = {**r, "suppressed": r["mem_with"] - r["mem_closed"], "confidence": recalled[ex.id]["p_first"],
                      "mem_vs_ctx": r["mem_with"] - r["ctx_with"]}
            rows.append((ex.relation, name, int(r["label"] == "context"), values))
    return rows


def regression_scores(train: list[dict], y: np.ndarray, test: list[dict], names: tuple[str, ...]) -> np.ndarray:
    """P(context) from a standardised logistic regression on ``names`` fitted on ``train``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.array([[v[n] for n in names] for v in train])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    return model.predict_proba(np.array([[v[n] for n in names] for v in test]))[:, 1]


def fold_table(rows, field: int) -> dict:
    """Per fold of ``field`` (0 relation, 1 format): accuracy of each reading against the majority label of the
    other folds; mean, worst margin over majority."""
    keys = np.array([r[field] for r in rows])
    y = np.array([r[2] for r in rows])
    values = [r[3] for r in rows]
    readers = {
        "regression": lambda tr, ytr, te: regression_scores(tr, ytr, te, FEATURES),
        "mem_top rule": lambda tr, ytr, te: np.array([1.0 - v["mem_top"] for v in te]),
        "reference: regression with the passage's answer": lambda tr, ytr, te: regression_scores(tr, ytr, te,
                                                                                                  REFERENCE),
    }
    folds = {}
    for fold in sorted(set(keys)):
        test, train = keys == fold, keys != fold
        tr, te = [v for v, k in zip(values, train) if k], [v for v, k in zip(values, test) if k]
        majority = int(y[train].mean() >= 0.5)
        entry = {"n": int(test.sum()), "majority_accuracy": float(np.mean(y[test] == majority))}
        for reader, score in readers.items():
            p = score(tr, y[train], te)
            entry[reader] = {"accuracy": float(np.mean((p > 0.5) == y[test])),
                             "auroc": _auroc(y[test], p) if len(set(y[test])) == 2 else None}
        folds[fold] = entry
    summary = {"majority_accuracy": fmean(f["majority_accuracy"] for f in folds.values())}
    for reader in readers:
        margins = [f[reader]["accuracy"] - f["majority_accuracy"] for f in folds.values()]
        aurocs = [f[reader]["auroc"] for f in folds.values() if f[reader]["auroc"] is not None]
        summary[reader] = {"accuracy": fmean(f[reader]["accuracy"] for f in folds.values()),
                           "over_majority": fmean(margins), "worst_margin": min(margins),
                           "auroc": fmean(aurocs) if aurocs else None}
    return {"folds": folds, "summary": summary}


def main() -> None:
    parser = capped_run_parser(__doc__.splitlines()[0], "a `sparekit probe --dataset broad` run directory")
    parser.add_argument("--recall", type=Path, default=None, help="a recall_design.py answers cache (mixed6.json)")
    parser.add_argument("--formats", default="three_shot,zero_shot,rag,llamaindex")
    args = parser.parse_args()
    lm = sparekit.load_model("default")
    data = load_dataset("broad", seed=PROMPT_SEED)
    items = capped_items(lm, data, args.run, args.per_relation)
    recalled = recall_rows(lm, items, args.recall)
    read = {name: readings(lm, data, items, recalled, args.out, name) for name in args.formats.split(",")}
    rows = feature_rows(items, recalled, read)
    result = {"n": len(rows), "context_share": float(np.mean([r[2] for r in rows])),
              "held_out_relation": fold_table(rows, 0), "held_out_format": fold_table(rows, 1)}
    atomic_write_json(args.out / "table.json", result)
    for field in ("held_out_relation", "held_out_format"):
        print(field, json.dumps(result[field]["summary"], indent=1))


if __name__ == "__main__":
    main()
