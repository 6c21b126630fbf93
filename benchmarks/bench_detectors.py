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

``--formats``: the capped items' captures in several formats stacked; every (held-out relation, held-out
format, seed) fits the probe on neither, and scores the recall detector (one closed-book generation per
item, cached under ``--out/recall``) on every item, the cached jsd / disagreement signals (``--signals-from``)
beside it; ``--source`` adds the training-free source prediction, ``--default-test`` the default dataset's
test split (BENCHMARKS.md, "The recall detector"), ``--save-combinations`` fits probe+recall for a probe folder.
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
from sparekit.evaluation.metrics import answer_source
from sparekit.hooks import Site
from sparekit.probes.detect import load_probes, resolve_probe_dir
from sparekit.probes.experiment import PROBE_PARAMS, PROMPT_SEED, ProbingData, collect, stack_formats
from sparekit.probes.linear import LinearProbe
from sparekit.probes.detectors import COMBINATIONS_FILE, DETECTORS, saved_combinations
from sparekit.probes.training_free import (Combination, closed_book_answers,
                                           detect_conflict, disagreement, divergence, next_token_log_probs,
                                           recall_answers, recall_score, save_combinations, unrecalled)
from sparekit.steering.output_effect import answer_first_tokens
from sparekit.utils.io import atomic_write_json, read_json_object

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


def cached_recall_answers(lm, items: ConflictDataset, out: Path) -> dict[str, dict]:
    """Per item id: the recall detector's closed-book answers (its own two prompts, :func:`recall_answers`) and the
    probability of the first one's first token; the same in every prompt format, so one generation per item (cached
    per chunk under ``out/recall-pairs``; the one-answer caches of the first three design rounds, ``out/recall``,
    are not read)."""
    found: dict[str, dict] = {}
    for start in range(0, len(items), CHUNK):
        path = out / "recall-pairs" / f"recall-{start // CHUNK:04d}.json"
        chunk = [items[i] for i in range(start, min(start + CHUNK, len(items)))]
        if path.is_file():
            found.update(json.loads(path.read_text()))
            continue
        answers, top = recall_answers(lm, [ex.question for ex in chunk])
        rows = {ex.id: {"closed": a, "p_first": float(p)} for ex, a, p in zip(chunk, answers, top)}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, rows)
        found.update(rows)
        print(f"recall {start + len(chunk)}/{len(items)}", flush=True)
    return found


def source_signal(lm, data: ConflictDataset, items: ConflictDataset, answers: dict[str, dict], out: Path,
                  fmt: PromptFormat) -> dict[str, dict]:
    """Per item id, read at the sub prompt's last token in ``fmt`` (its prompt pass, before any token is
    generated): the log-probabilities of the first closed-book answer's first token (:func:`cached_recall_answers`)
    and of the context's answer's first token, and whether the former is the top token (cached per chunk)."""
    prompts = condition_prompts(data, "sub", PROMPT_SEED, K_SHOT, fmt=fmt)
    found: dict[str, dict] = {}
    for start in range(0, len(items), CHUNK // 2):
        path = out / f"source-{fmt.name}" / f"source-{start // (CHUNK // 2):04d}.json"
        chunk = [items[i] for i in range(start, min(start + CHUNK // 2, len(items)))]
        if path.is_file():
            found.update(json.loads(path.read_text()))
            continue
        log_probs = next_token_log_probs(lm, [prompts[ex.id] for ex in chunk])
        memory = answer_first_tokens(lm, [answers[ex.id]["closed"][0] for ex in chunk])
        context = answer_first_tokens(lm, [ex.sub_answer[0] for ex in chunk])
        rows = {ex.id: {"memory_lp": float(lp[m]), "context_lp": float(lp[c]), "memory_top": bool(lp.argmax() == m)}
                for ex, lp, m, c in zip(chunk, log_probs, memory, context)}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, rows)
        found.update(rows)
        print(f"source {fmt.name} {start + len(chunk)}/{len(items)}", flush=True)
    return found


def _auroc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def _best_threshold(y: np.ndarray, score: np.ndarray) -> float:
    candidates = np.unique(score)
    return float(max(candidates, key=lambda t: (np.mean((score >= t) == y), -t)))


#: each signal's key in the cached signal rows (``{key}_org`` / ``{key}_sub``)
SIGNAL_KEYS = {"jsd": "jsd", "disagreement": "dis", "recall": "recall"}


def signal_rows(items: ConflictDataset, found: dict[str, dict], names: list[str]) -> dict[str, np.ndarray]:
    """Per signal in ``names``, its value on the org then the sub rows of ``items`` (the order of
    ``ProbingData.target``), NaN where it was not computed."""
    return {name: np.array([found.get(ex.id, {}).get(f"{SIGNAL_KEYS[name]}_{c}", np.nan)
                            for c in ("org", "sub") for ex in items]) for name in names}


def recall_signal(data: ConflictDataset, items: ConflictDataset, answers: dict[str, dict],
                  fmt: PromptFormat) -> dict[str, dict]:
    """Per item id, the recall detector's score of its org and sub prompts in ``fmt`` (text only: the closed-book
    answers are :func:`cached_recall_answers`'); the twin is the format's own closed-book prompt, as in
    :func:`signals`."""
    prompts = {c: condition_prompts(data, c, PROMPT_SEED, K_SHOT, fmt=fmt) for c in ("org", "sub")}
    k_shot = K_SHOT if fmt.shots else 0
    twins = [build_prompt(ex, None, item_demos(ex, data, PROMPT_SEED, k_shot, fmt=fmt), fmt) for ex in items]
    closed, questions = [answers[ex.id]["closed"] for ex in items], [ex.question for ex in items]
    confidence = np.array([answers[ex.id]["p_first"] for ex in items])
    found: dict[str, dict] = {ex.id: {} for ex in items}
    for c in ("org", "sub"):
        scores = recall_score(unrecalled(closed, questions, [prompts[c][ex.id] for ex in items], twins), confidence)
        for ex, score in zip(items, scores):
            found[ex.id][f"recall_{c}"] = float(score)
    return found


def conflict_row_relations(train: ProbingData) -> np.ndarray:
    """Each conflict row's relation: org rows, then sub rows (``ProbingData.target("conflict", ...)``'s order)."""
    return np.array([ex.relation for ex in train.items] * 2, dtype=object)


def fold_scores(train: ProbingData, rows: dict[str, np.ndarray], sites: list[Site], test_rel: str, seed: int,
                test_fmt: str | None = None, logits: dict | None = None) -> dict:
    """One (held-out relation, seed; with ``test_fmt`` also a held-out prompt format of stacked data): every
    detector's dev and test accuracy / AUROC on the rows where all of ``rows``' signals were computed
    (``logits``: a cache of the fold's probe logits, which do not depend on the signals)."""
    relations = [r for r in held_out_values(train.items, "relation") if r != test_rel]
    rng = random.Random(f"{seed}:{test_rel}")
    dev_rels = set(rng.sample(relations, max(2, round(len(relations) / 4))))
    rel = conflict_row_relations(train)
    fmt = np.array((train.formats or [""] * len(train.items)) * 2, dtype=object)
    y = np.repeat([0, 1], len(train.items))
    present = np.all([~np.isnan(v) for v in rows.values()], 0) if rows else np.ones(len(y), bool)
    seen = fmt != test_fmt if test_fmt else np.ones(len(y), bool)
    fit = ~np.isin(rel, list(dev_rels) + [test_rel]) & seen
    parts = {"dev": np.isin(rel, list(dev_rels)) & seen & present,
             "test": (rel == test_rel) & (~seen if test_fmt else True) & present}
    best = None
    for site in sites:
        key = (str(site), test_rel, seed, test_fmt)
        if logits is None or key not in logits:
            X, _, _ = train.target("conflict", site)
            logit = LinearProbe(seed=seed, **PROBE_PARAMS).fit(X[fit], y[fit]).decision_function(X)
            if logits is not None:
                logits[key] = logit
        logit = logits[key] if logits is not None else logit
        dev_auroc = _auroc(y[parts["dev"]], logit[parts["dev"]])
        if best is None or dev_auroc > best[0]:
            best = (dev_auroc, site, logit)
    _, site, logit = best
    dev = parts["dev"]
    out = {"site": str(site), "dev_relations": sorted(dev_rels), "format": test_fmt}
    scores = {"probe": (logit, logit > 0)}
    for name, v in rows.items():
        if name == "jsd":
            out["jsd_threshold"] = threshold = _best_threshold(y[dev], v[dev])
        scores[name] = (v, v >= threshold if name == "jsd" else v > 0.5)
        p = Combination(name).fit(logit[dev], v[dev], y[dev]).proba(logit, v)
        scores[f"probe+{name}"] = (p, p > 0.5)
    for name, (score, decision) in scores.items():
        out[name] = {f"{part}_{m}": f(y[mask], score[mask], decision[mask]) for part, mask in parts.items()
                     for m, f in (("accuracy", lambda t, s, d: float(np.mean(d == t))),
                                  ("auroc", lambda t, s, d: _auroc(t, s)))}
    return out


def summarise(folds: dict[str, list[dict]]) -> dict:
    """Per detector: test accuracy / AUROC mean over held-out relations (each a mean over its runs: seeds, and
    formats where they are held out), worst fold and spread, the dev accuracy / AUROC the default is chosen by;
    with held-out formats also the same over formats (each a mean over relations and seeds)."""
    names = [n for n in DETECTORS if n in next(iter(folds.values()))[0]]
    table = {name: {**_spread({r: [f[name] for f in runs] for r, runs in folds.items()}),
                    "per_relation": {r: {k: fmean(f[name][k] for f in runs) for k in ("test_accuracy", "test_auroc")}
                                     for r, runs in folds.items()}} for name in names}
    formats = sorted({f["format"] for runs in folds.values() for f in runs if f["format"]})
    for name in names if formats else ():
        by_format = {fm: [f[name] for runs in folds.values() for f in runs if f["format"] == fm] for fm in formats}
        table[name]["by_format"] = _spread(by_format, ("test_accuracy", "test_auroc"))
    return table


def _spread(runs: dict[str, list[dict]],
            keys: tuple[str, ...] = ("test_accuracy", "test_auroc", "dev_accuracy", "dev_auroc")) -> dict:
    """Mean / std / worst over the folds of ``runs`` (fold -> its runs' scores) of each key, and each fold's mean."""
    per_fold = {fold: {k: fmean(r[k] for r in scores) for k in keys} for fold, scores in runs.items()}
    row = {k: {"mean": fmean(v[k] for v in per_fold.values()), "std": pstdev(v[k] for v in per_fold.values()),
               "worst": min(v[k] for v in per_fold.values())} for k in keys}
    return {**row, "folds": per_fold}


def timing(lm, texts: list[str], folder: Path, repeats: int = 1) -> dict[str, float]:
    """Median ms per prompt of each detector on ``texts``, interleaved per prompt in one process (the
    combinations ``folder`` has no fit for are left out)."""
    probes = load_probes(folder, lm.info.model_hash)
    fitted = set(read_json_object(folder / COMBINATIONS_FILE).get("combinations", {})) \
        if (folder / COMBINATIONS_FILE).is_file() else set()
    names = [n for n in DETECTORS if not n.startswith("probe+") or n.removeprefix("probe+") in fitted]
    for name in names:  # warm-up
        detect_conflict(lm, texts[0], name, probes)
    spent: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for text in texts:
            for name in names:
                start = time.perf_counter()
                detect_conflict(lm, text, name, probes)
                spent[name].append(1000 * (time.perf_counter() - start))
    return {name: median(v) for name, v in spent.items()}


def timing_texts(data: ConflictDataset, items: ConflictDataset, n: int) -> list[str]:
    """The org and sub three_shot prompts of ``n // 2`` items (seeded): what :func:`timing` reads."""
    prompts = {c: condition_prompts(data, c, PROMPT_SEED, K_SHOT) for c in ("org", "sub")}
    return [prompts[c][ex.id] for ex in items.sample(n // 2, seed=1) for c in ("org", "sub")]


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
    parser.add_argument("--formats", default=None,
                        help="comma-separated formats: hold out a (relation, format) pair in turn on their stacked "
                             "captures, with the recall detector on every item and jsd/disagreement where "
                             "--signals-from has them")
    parser.add_argument("--fit-layers", default=None,
                        help="with --formats: the layers (of --layers, the capture's) the probe is fitted at in each "
                             "fold, the best on dev (default: all)")
    parser.add_argument("--signals-from", type=Path, default=None,
                        help="with --formats: DIR holds the three_shot signals, DIR-<format> the others'")
    parser.add_argument("--source", type=Path, default=None,
                        help="with --formats: a ship_probes.py answers/broad folder; also run the training-free source "
                             "prediction (one prompt pass per sub prompt and format)")
    parser.add_argument("--default-test", type=Path, default=None,
                        help="with --formats: also read the default dataset's test split (ship_probes.py's --out, "
                             "holding its capture)")
    parser.add_argument("--timing", type=int, default=4, help="prompts timed per detector (0: skip)")
    parser.add_argument("--save-combinations", type=Path, default=None,
                        help="fit the probe+signal combinations for the probes in this folder and write its "
                             "detectors.json: probe+jsd and probe+disagreement on every detection row; with "
                             "--formats, probe+recall stacked on out-of-relation probe logits (the others kept)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lm = sparekit.load_model("default")
    data = load_dataset("broad", seed=PROMPT_SEED)
    sites = [Site(int(layer)) for layer in args.layers.split(",")]
    if args.formats:
        result = formats_table(lm, data, args, sites)
        atomic_write_json(args.out / "detectors.json", result)
        print(json.dumps({k: v.get("table", v) for k, v in result.items()}, indent=1))
        return
    fmt = prompt_format(args.prompt_format, lm.tokenizer)
    if args.signals_only:  # beside the capture and answers of another process
        signals(lm, data, detection_items(capped_items(lm, data, args.run, args.per_relation), args.signal_items, 0),
                args.out, fmt)
        return
    train = capped_probing_data(lm, data, sites, args.run, args.per_relation, answers=False,  # conflict only
                                fmt=args.prompt_format)
    items = detection_items(train.items, args.signal_items, seed=0)
    sig = signals(lm, data, items, args.out, fmt)
    rows = signal_rows(train.items, sig, ["jsd", "disagreement"])
    folds = {r: [fold_scores(train, rows, sites, r, int(s)) for s in args.seeds.split(",")]
             for r in held_out_values(train.items, "relation")}
    result = {"n_items": len(items), "relations": len(folds), **table_of(folds)}
    if args.save_combinations is not None:
        result["combinations"] = fit_combinations(lm, train, sig, items, args.save_combinations)
    if args.timing:
        result["ms_per_prompt"] = timing(lm, timing_texts(data, items, args.timing),
                                         args.save_combinations or resolve_probe_dir(None))
    atomic_write_json(args.out / "detectors.json", result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("folds",)}, indent=1))


def table_of(folds: dict[str, list[dict]]) -> dict:
    """The summary of ``folds`` and the detector dev ranks first (dev accuracy, then dev AUROC)."""
    table = summarise(folds)
    default = max(table, key=lambda n: (table[n]["dev_accuracy"]["mean"], table[n]["dev_auroc"]["mean"]))
    return {"table": table, "default_on_dev": default, "folds": folds}


def formats_table(lm, data: ConflictDataset, args: argparse.Namespace, sites: list[Site]) -> dict:
    """``--formats``: every (held-out relation, held-out format, seed) on the capped items' stacked captures; the
    recall detector on every item, and beside it, on the items ``--signals-from`` has, jsd and disagreement."""
    names = args.formats.split(",")
    per_format = {n: capped_probing_data(lm, data, sites, args.run, args.per_relation, answers=False, fmt=n)
                  for n in names}
    items = per_format[names[0]].items
    answers = cached_recall_answers(lm, items, args.out)
    found: dict[str, dict] = {}
    for name in names:
        old = {} if args.signals_from is None else cached_signals(signal_dir(args.signals_from, name))
        for item_id, row in recall_signal(data, items, answers, prompt_format(name, lm.tokenizer)).items():
            found[f"{item_id}@{name}"] = {**old.get(item_id, {}), **row}
    train, logits = stack_formats(per_format), {}
    sites = [Site(int(layer)) for layer in args.fit_layers.split(",")] if args.fit_layers else sites
    result = {}
    for label, signal_names in (("all_items", ["recall"]), ("signal_items", ["jsd", "disagreement", "recall"])):
        rows = signal_rows(train.items, found, signal_names)
        if args.signals_from is None and label == "signal_items":
            continue
        folds = {r: [fold_scores(train, rows, sites, r, int(s), name, logits) for s in args.seeds.split(",")
                     for name in names] for r in held_out_values(train.items, "relation")}
        n_items = int(np.all([~np.isnan(v) for v in rows.values()], 0).sum() // (2 * len(names)))
        result[label] = {"n_items": n_items, **table_of(folds)}
        print(f"{label}: {n_items} items", flush=True)
    if args.save_combinations is not None:
        probes = load_probes(args.save_combinations, lm.info.model_hash)
        recall = signal_rows(train.items, found, ["recall"])["recall"]
        result["recall_combination"] = fit_recall_combination(train, recall, args.save_combinations,
                                                               probes.sites["conflict"])
    if args.source is not None:
        result["source"] = source_table(lm, data, items, answers, args)
    if args.default_test is not None:
        result["default_test"] = default_test_table(lm, args)
    if args.timing:
        result["ms_per_prompt"] = timing(lm, timing_texts(data, items, args.timing), resolve_probe_dir(None), 2)
    return result


def source_table(lm, data: ConflictDataset, items: ConflictDataset, answers: dict[str, dict],
                 args: argparse.Namespace) -> dict:
    """``--source``: the training-free source prediction (memory where the sub prompt's next-token distribution
    puts the closed-book answer's first token above the context's answer's) against the majority label, per
    held-out relation and per format; labels from the model's answers to the sub prompts (ship_probes.py's
    cached answers and these signals'), as the source probe's."""
    from ship_probes import known_answers, predictions  # lazy: ship_probes imports this module

    names = args.formats.split(",")
    said = predictions([args.source], known_answers([signal_dir(args.signals_from, n) for n in names], names), names)
    rows = []
    for name in names:
        read = source_signal(lm, data, items, answers, args.out, prompt_format(name, lm.tokenizer))
        for ex in items:
            label = answer_source(said[name][ex.id], ex) if ex.id in said[name] else "other"
            if label != "other":
                margin = read[ex.id]["memory_lp"] - read[ex.id]["context_lp"]
                rows.append((ex.relation, name, int(label == "context"), -margin))
    rel, fmt, y, score = (np.array(c) for c in zip(*rows))
    table = {}
    for field, values in (("relation", rel), ("format", fmt)):
        folds = {}
        for fold in sorted(set(values)):
            test, train = values == fold, values != fold
            majority = int(y[train].mean() >= 0.5)  # the label most frequent outside the fold
            # the two answers' first tokens are the same (12 / 15): the reading says nothing, so the majority
            said = np.where(score[test] == 0, majority, score[test] > 0)
            folds[fold] = {"n": int(test.sum()), "accuracy": float(np.mean(said == y[test])),
                           "tied": float(np.mean(score[test] == 0)),
                           "majority_accuracy": float(np.mean(y[test] == majority)),
                           "auroc": _auroc(y[test], score[test]) if len(set(y[test])) == 2 else None}
        table[field] = {"folds": folds, **{k: fmean(f[k] for f in folds.values()) for k in
                                            ("accuracy", "majority_accuracy")}}
    return {"n": len(rows), "context_share": float(y.mean()), **table}


def default_test_table(lm, args: argparse.Namespace) -> dict:
    """``--default-test``: the shipped probe and the recall detector on the default dataset's test split (the
    steering benchmark's, 150 items; features from ship_probes.py's capture under ``DIR``) in every format."""
    from ship_probes import default_features, default_splits  # lazy: ship_probes imports this module

    data, names = load_dataset("default", seed=PROMPT_SEED), args.formats.split(",")
    items = default_splits(lm, args.default_test)["test"]
    answers = cached_recall_answers(lm, items, args.out / "default-test")
    probes = load_probes(resolve_probe_dir(None), lm.info.model_hash)
    site = probes.sites["conflict"]
    features = default_features(lm, args.default_test, [Site(10), Site(13)], names)["test"]  # ship_probes' capture
    table = {}
    for name in names:
        X, y, _ = features[name].target("conflict", site)
        logit = probes.probes["conflict"].decision_function(X)
        found = recall_signal(data, features[name].items, answers, prompt_format(name, lm.tokenizer))
        recall = signal_rows(features[name].items, found, ["recall"])["recall"]
        table[name] = {detector: {"accuracy": float(np.mean(decision == y)), "auroc": _auroc(y, score)}
                       for detector, score, decision in (("probe", logit, logit > 0), ("recall", recall, recall > 0.5))}
    return {"n_items": len(items), "table": table}


def signal_dir(root: Path, name: str) -> Path:
    """Where bench_detectors.py wrote format ``name``'s signals: ``root`` for three_shot, else ``root-name``."""
    return root if name == DEFAULT_FORMAT else root.with_name(f"{root.name}-{name}")


def cached_signals(folder: Path) -> dict[str, dict]:
    """Every ``signals-*.json`` chunk of ``folder`` (what :func:`signals` cached), merged."""
    found: dict[str, dict] = {}
    for path in sorted(folder.glob("signals-*.json")):
        found.update(json.loads(path.read_text()))
    return found


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


def out_of_relation_logits(train: ProbingData, site: Site, seed: int = 0) -> np.ndarray:
    """Each conflict row's probe logit from a probe fitted (as the shipped one: ``PROBE_PARAMS``, at ``site``, every
    format) on the other relations' rows only: what the probe says about facts it never saw."""
    X, y, _ = train.target("conflict", site)
    relation = conflict_row_relations(train)
    logit = np.empty(len(y))
    for held_out in held_out_values(train.items, "relation"):
        test = relation == held_out
        logit[test] = LinearProbe(seed=seed, **PROBE_PARAMS).fit(X[~test], y[~test]).decision_function(X[test])
    return logit


def fit_recall_combination(train: ProbingData, recall: np.ndarray, folder: Path, site: Site) -> dict:
    """probe+recall for the probes in ``folder``, stacked: fitted on :func:`out_of_relation_logits` beside the recall
    score (a combination fitted on the shipped probe's own training rows would trust the probe as if every prompt
    were a relation it was fitted on). Added to the folder's detectors.json beside its other combinations; returns
    the coefficients and, per held-out relation, probe+recall refitted without that relation against recall alone."""
    y = np.repeat([0, 1], len(train.items))
    logit = out_of_relation_logits(train, site)
    relation = conflict_row_relations(train)
    folds = {}
    for held_out in held_out_values(train.items, "relation"):
        test = relation == held_out
        p = Combination("recall").fit(logit[~test], recall[~test], y[~test]).proba(logit[test], recall[test])
        folds[held_out] = {name: {"accuracy": float(np.mean((score > 0.5) == y[test])), "auroc": _auroc(y[test], score)}
                           for name, score in (("probe+recall", p), ("recall", recall[test]),
                                               ("probe", 1 / (1 + np.exp(-logit[test]))))}
    fitted = Combination("recall").fit(logit, recall, y)
    kept = [Combination(signal, tuple(entry["coef"]), entry["intercept"])
            for signal, entry in saved_combinations(folder).items() if signal != "recall"]
    path = folder / COMBINATIONS_FILE
    note = read_json_object(path).get("note", "").split("; recall: ")[0] if path.is_file() else ""
    save_combinations(folder, [*kept, fitted], f"{note}; recall: stacked on out-of-relation probe logits by "
                      f"benchmarks/bench_detectors.py --formats --save-combinations on {len(train.items)} broad "
                      f"rows (items x formats) x 2 prompts ({time.strftime('%Y-%m-%d')})".lstrip("; "))
    means = {name: {m: fmean(f[name][m] for f in folds.values()) for m in ("accuracy", "auroc")}
             for name in ("probe+recall", "recall", "probe")}
    return {"coef": fitted.coef, "intercept": fitted.intercept, "held_out_relation_mean": means, "folds": folds}


if __name__ == "__main__":
    main()
