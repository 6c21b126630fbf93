"""Conflict detectors on held-out relations of the broad corpus: probe, JSD, closed-book disagreement, combos.

Reads which items are memorised from a `sparekit probe --dataset broad` run's closed-book cache, keeps at
most ``--per-relation`` of each relation (seeded, so no relation dominates), captures their features and
conflict answers (cached under the run's ``capped-N`` folder), then, per item, generates the closed-book
prompt (same demonstrations, no context line) and the org and sub prompts, each giving its answer and the
next-token distribution at the last prompt token (the first decoding step). Split, per held-out
relation r and seed: the other relations are divided into fit relations (~3/4; the probe is fitted on
their rows, at the layer best on dev) and dev relations (~1/4; the JSD threshold, the combinations'
logistic regressions and the default detector are chosen there); r is the test.

    sparekit probe --dataset broad --layers 7,10,13 --out runs/broad-probe   # its closed-book answers
    python benchmarks/bench_detectors.py --run runs/broad-probe --out runs/detectors \
      --save-combinations runs/detectors/shipped-probes

``--prompt-format``: every prompt (the probe's features, the signals' prompts and their closed-book
twins: the same demonstrations, no passage for the item) in another registered format.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from statistics import fmean, median, pstdev

import numpy as np
import torch

import sparekit
from sparekit.data import ConflictDataset, load_dataset
from sparekit.data.dataset import held_out_values
from sparekit.data.formats import DEFAULT_FORMAT, PromptFormat, prompt_format
from sparekit.data.prompts import build_prompt, item_demos
from sparekit.evaluation.harness import condition_prompts, memorised_subset
from sparekit.hooks import Site
from sparekit.probes.detect import load_probes, resolve_probe_dir
from sparekit.probes.experiment import PROBE_PARAMS, PROMPT_SEED, ProbingData, collect
from sparekit.probes.linear import LinearProbe
from sparekit.probes.training_free import (DETECTORS, Combination, closed_book_answers, detect_conflict,
                                           disagreement, divergence, save_combinations)
from sparekit.utils.io import atomic_write_json

K_SHOT = 3
CHUNK = 16


def detection_items(items: ConflictDataset, per_relation: int, seed: int) -> ConflictDataset:
    """At most ``per_relation`` memorised items of each relation (seeded), so no relation dominates."""
    rng = random.Random(seed)
    keep: list[int] = []
    for relation in held_out_values(items, "relation"):
        rows = [i for i, ex in enumerate(items) if ex.relation == relation]
        keep += sorted(rng.sample(rows, min(per_relation, len(rows))))
    return items.subset(sorted(keep))


def format_dir(run: Path, per_relation: int, name: str) -> Path:
    """Where one prompt format's capture of the capped items is cached (three_shot: ``run/capped-N``)."""
    return run / (f"capped-{per_relation}" if name == DEFAULT_FORMAT else f"capped-{per_relation}-{name}")


def capped_probing_data(lm, data: ConflictDataset, sites: list[Site], run: Path, per_relation: int,
                        answers: bool, fmt: str = DEFAULT_FORMAT, items: ConflictDataset | None = None,
                        batch_size: int = 8) -> ProbingData:
    """Features (and with ``answers`` the conflict behaviour) of at most ``per_relation`` memorised items per
    relation (``items``, if known already), memorisation read from the probe run's closed-book cache, their
    prompts in format ``fmt``; cached under :func:`format_dir`."""
    return collect(lm, data, sites, format_dir(run, per_relation, fmt), k_shot=K_SHOT, prompt_seed=PROMPT_SEED,
                   answers=answers, items=items or capped_items(lm, data, run, per_relation),
                   fmt=prompt_format(fmt, lm.tokenizer), batch_size=batch_size)


def capped_items(lm, data: ConflictDataset, run: Path, per_relation: int) -> ConflictDataset:
    """At most ``per_relation`` memorised items per relation, memorisation read from the probe run's cache."""
    memorised = memorised_subset(lm, data, seed=PROMPT_SEED, k_shot=K_SHOT, cache_dir=run / "data-train" / "closed-book")
    return detection_items(memorised, per_relation, seed=0)


def signals(lm, data: ConflictDataset, items: ConflictDataset, out: Path,
            fmt: PromptFormat | None = None) -> dict[str, dict]:
    """Per item id: JSD and disagreement of its org and sub prompts in ``fmt`` against its closed-book twin
    (the same demonstrations, no passage for the item; cached)."""
    fmt = fmt or prompt_format(DEFAULT_FORMAT)
    prompts = {c: condition_prompts(data, c, PROMPT_SEED, K_SHOT, fmt=fmt) for c in ("org", "sub")}
    k_shot = K_SHOT if fmt.shots else 0  # as condition_prompts: a zero-shot format takes no demonstrations
    found: dict[str, dict] = {}
    for start in range(0, len(items), CHUNK):
        path = out / f"signals-{start // CHUNK:04d}.json"
        chunk = [items[i] for i in range(start, min(start + CHUNK, len(items)))]
        if path.is_file():
            found.update(json.loads(path.read_text()))
            continue
        closed = [build_prompt(ex, None, item_demos(ex, data, PROMPT_SEED, k_shot, fmt=fmt), fmt) for ex in chunk]
        answers, log_probs = closed_book_answers(lm, closed)
        rows = {ex.id: {"closed": a} for ex, a in zip(chunk, answers)}
        for condition in ("org", "sub"):
            with_answers, with_log_probs = closed_book_answers(lm, [prompts[condition][ex.id] for ex in chunk])
            for ex, a, jsd, dis in zip(chunk, with_answers, divergence(with_log_probs, log_probs),
                                       disagreement(with_answers, answers)):
                rows[ex.id].update({condition: a, f"jsd_{condition}": float(jsd), f"dis_{condition}": float(dis)})
        atomic_write_json(path, rows)
        found.update(rows)
        print(f"signals {start + len(chunk)}/{len(items)}", flush=True)
    return found


def _auroc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def _best_threshold(y: np.ndarray, score: np.ndarray) -> float:
    candidates = np.unique(score)
    return float(max(candidates, key=lambda t: (np.mean((score >= t) == y), -t)))


def fold_scores(train: ProbingData, sig: dict, det_ids: set[str], sites: list[Site], test_rel: str,
                seed: int) -> dict:
    """One (held-out relation, seed): every detector's dev and test accuracy / AUROC."""
    relations = [r for r in held_out_values(train.items, "relation") if r != test_rel]
    rng = random.Random(f"{seed}:{test_rel}")
    dev_rels = set(rng.sample(relations, max(2, round(len(relations) / 4))))
    ids = [ex.id for ex in train.items]
    rel = np.array([ex.relation for ex in train.items] * 2, dtype=object)
    y = np.repeat([0, 1], len(ids))
    detect = np.array([i in det_ids for i in ids] * 2)
    fit = ~np.isin(rel, list(dev_rels) + [test_rel])
    parts = {"dev": np.isin(rel, list(dev_rels)) & detect, "test": (rel == test_rel) & detect}
    jsd, dis = (np.array([sig.get(i, {}).get(f"{key}_{c}", 0.0) for c in ("org", "sub") for i in ids])
                for key in ("jsd", "dis"))
    best = None
    for site in sites:
        X, _, _ = train.target("conflict", site)
        probe = LinearProbe(seed=seed, **PROBE_PARAMS).fit(X[fit], y[fit])
        logit = probe.decision_function(X)
        dev_auroc = _auroc(y[parts["dev"]], logit[parts["dev"]])
        if best is None or dev_auroc > best[0]:
            best = (dev_auroc, site, logit)
    _, site, logit = best
    dev = parts["dev"]
    threshold = _best_threshold(y[dev], jsd[dev])
    combos = {s: Combination(s).fit(logit[dev], v[dev], y[dev]) for s, v in (("jsd", jsd), ("disagreement", dis))}
    scores = {"probe": (logit, logit > 0), "jsd": (jsd, jsd >= threshold), "disagreement": (dis, dis > 0.5)}
    for s, v in (("jsd", jsd), ("disagreement", dis)):
        p = combos[s].proba(logit, v)
        scores[f"probe+{s}"] = (p, p > 0.5)
    out = {"site": str(site), "jsd_threshold": threshold, "dev_relations": sorted(dev_rels)}
    for name, (score, decision) in scores.items():
        out[name] = {f"{part}_{m}": f(y[mask], score[mask], decision[mask]) for part, mask in parts.items()
                     for m, f in (("accuracy", lambda t, s, d: float(np.mean(d == t))),
                                  ("auroc", lambda t, s, d: _auroc(t, s)))}
    return out


def summarise(folds: dict[str, list[dict]]) -> dict:
    """Per detector: test accuracy / AUROC mean over held-out relations (each a mean over seeds), worst
    fold and spread, and the dev accuracy / AUROC the default is chosen by."""
    table = {}
    for name in DETECTORS:
        per_rel = {r: {k: fmean(f[name][k] for f in runs) for k in runs[0][name]} for r, runs in folds.items()}
        row = {}
        for k in ("test_accuracy", "test_auroc", "dev_accuracy", "dev_auroc"):
            values = [v[k] for v in per_rel.values()]
            row[k] = {"mean": fmean(values), "std": pstdev(values), "worst": min(values)}
        row["per_relation"] = {r: {k: v[k] for k in ("test_accuracy", "test_auroc")} for r, v in per_rel.items()}
        table[name] = row
    return table


def timing(lm, texts: list[str], folder: Path, repeats: int = 1) -> dict[str, float]:
    """Median ms per prompt of each detector on ``texts``, interleaved per prompt in one process."""
    probes = load_probes(folder, lm.info.model_hash)
    for name in DETECTORS:  # warm-up
        detect_conflict(lm, texts[0], name, probes)
    spent: dict[str, list[float]] = {name: [] for name in DETECTORS}
    for _ in range(repeats):
        for text in texts:
            for name in DETECTORS:
                start = time.perf_counter()
                detect_conflict(lm, text, name, probes)
                spent[name].append(1000 * (time.perf_counter() - start))
    return {name: median(v) for name, v in spent.items()}


def capped_run_parser(description: str, run_help: str) -> argparse.ArgumentParser:
    """The options every script over a capped broad probe run shares: the run, the output, the layers, the cap."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run", type=Path, required=True, help=run_help)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", default="7,10,13")
    parser.add_argument("--per-relation", type=int, default=30)
    return parser


def main() -> None:
    parser = capped_run_parser(__doc__.splitlines()[0], "a `sparekit probe --dataset broad` run directory")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--signal-items", type=int, default=12,
                        help="per relation, at most this many of those items get the training-free signals (dev and "
                             "test rows); the probe is fitted on all of its fit relations' items")
    parser.add_argument("--signals-only", action="store_true", help="compute the signals and stop")
    parser.add_argument("--prompt-format", default=DEFAULT_FORMAT, help="the format of every prompt (module docstring)")
    parser.add_argument("--timing", type=int, default=4, help="prompts timed per detector (0: skip)")
    parser.add_argument("--save-combinations", type=Path, default=None,
                        help="fit the probe+signal combinations for the probes in this folder on every detection "
                             "row and write its detectors.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lm = sparekit.load_model("default")
    data = load_dataset("broad", seed=PROMPT_SEED)
    sites = [Site(int(layer)) for layer in args.layers.split(",")]
    fmt = prompt_format(args.prompt_format, lm.tokenizer)
    if args.signals_only:  # beside the capture and answers of another process
        signals(lm, data, detection_items(capped_items(lm, data, args.run, args.per_relation), args.signal_items, 0),
                args.out, fmt)
        return
    train = capped_probing_data(lm, data, sites, args.run, args.per_relation, answers=False,  # conflict only
                                fmt=args.prompt_format)
    items = detection_items(train.items, args.signal_items, seed=0)
    sig = signals(lm, data, items, args.out, fmt)
    det_ids = {ex.id for ex in items}
    folds = {r: [fold_scores(train, sig, det_ids, sites, r, int(s)) for s in args.seeds.split(",")]
             for r in held_out_values(train.items, "relation")}
    table = summarise(folds)
    default = max(DETECTORS, key=lambda n: (table[n]["dev_accuracy"]["mean"], table[n]["dev_auroc"]["mean"]))
    result = {"n_items": len(items), "relations": len(folds), "table": table, "default_on_dev": default,
              "jsd_thresholds": [f["jsd_threshold"] for runs in folds.values() for f in runs],
              "sites": [f["site"] for runs in folds.values() for f in runs], "folds": folds}
    if args.save_combinations is not None:
        result["combinations"] = fit_combinations(lm, train, sig, items, args.save_combinations)
    if args.timing:
        texts = [t for ex in items.sample(args.timing // 2, seed=1)
                 for t in (condition_prompts(data, "org", PROMPT_SEED, K_SHOT)[ex.id],
                           condition_prompts(data, "sub", PROMPT_SEED, K_SHOT)[ex.id])]
        result["ms_per_prompt"] = timing(lm, texts, args.save_combinations or resolve_probe_dir(None))
    atomic_write_json(args.out / "detectors.json", result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("folds",)}, indent=1))


def fit_combinations(lm, train: ProbingData, sig: dict, items: ConflictDataset, folder: Path,
                     by: str = "benchmarks/bench_detectors.py") -> dict:
    """Fit probe+jsd and probe+disagreement for the conflict probe in ``folder`` on every detection row (``by``:
    the script named in detectors.json's note)."""
    probes = load_probes(folder, lm.info.model_hash)
    site = probes.sites["conflict"]
    index = {ex.id: i for i, ex in enumerate(train.items)}
    rows = [index[ex.id] for ex in items]
    X = torch.cat([train.org[site][rows], train.sub[site][rows]])
    y = np.repeat([0, 1], len(rows))
    logit = probes.probes["conflict"].decision_function(X)
    fitted = []
    for signal, key in (("jsd", "jsd"), ("disagreement", "dis")):
        values = np.array([sig[ex.id][f"{key}_org"] for ex in items] + [sig[ex.id][f"{key}_sub"] for ex in items])
        fitted.append(Combination(signal).fit(logit, values, y))
    save_combinations(folder, fitted, f"fitted by {by} on {len(rows)} broad items "
                                      f"x 2 prompts ({time.strftime('%Y-%m-%d')})")
    alone = {"accuracy": float(np.mean((logit > 0) == y)), "auroc": _auroc(y, logit)}  # the folder's probe on broad
    return {"probe_alone": alone, **{c.signal: {"coef": c.coef, "intercept": c.intercept} for c in fitted}}


if __name__ == "__main__":
    main()
