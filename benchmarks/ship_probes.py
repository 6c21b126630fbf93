"""Refit the probes shipped for the default model across prompt formats (issue 29 item 3).

Steps (``step``; data cached under ``--out``, every step resumes; BENCHMARKS.md, "Shipped probes refitted across
formats", has the commands and the tables):

- ``capture``: the default dataset's memorised rows (the steering benchmark's pool, dev and test splits), their
  org and sub prompts in every prompt format the model has, last prompt token after blocks ``--layers``; the
  broad corpus' capped items come captured already (``--run``: a broad probe run with its
  ``capped-N[-format]`` captures, as benchmarks/probe_formats.py leaves them);
- ``answers``: the model's greedy answer to the broad items' sub (conflict) prompts in each format, in rounds of
  ``--per-round`` items per relation, so a job stopped at a deadline leaves whole rounds (``--signals``: answers
  bench_detectors.py generated already); the source label is :func:`~sparekit.evaluation.metrics.answer_source`;
- ``design``: the candidates on dev (one threshold or one per format, blocks 10 and 13, the default rows' weight);
- ``test`` (``--target conflict|source``) and ``recipe``: the chosen probes against the shipped ones, held out;
- ``write``: the shipped conflict and source probes and detectors.json (it wrote the shipped SpARE's probe gate too
  until every shipped bundle gated on the recall detector, which fits nothing: BENCHMARKS.md, "The shipped SpARE
  gates on the recall detector");
- ``readings``: README's France example read by the shipped probes in every format.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from tqdm.auto import tqdm

import sparekit
from sparekit.data import ConflictDataset, load_dataset
from sparekit.data.formats import prompt_format
from sparekit.evaluation.metrics import answer_source
from sparekit.evaluation.harness import condition_prompts, generate_keyed, memorised_subset
from sparekit.utils.io import atomic_write_json
from sparekit.hooks import Site
from sparekit.models.assets import default_assets
from sparekit.probes.detect import detect, detect_prompt, load_probes
from sparekit.probes.experiment import PROBE_PARAMS, PROMPT_SEED, TEST_FRACTION, ProbingData, collect
from sparekit.probes.linear import LinearProbe
from sparekit.steering.bench.data import benchmark_splits
from sparekit.steering.bench.protocol import BenchConfig

from bench_detectors import (K_SHOT, capped_items, capped_probing_data, detection_items,  # benchmarks/, beside this
                             fit_combinations, signals)
from probe_formats import _rows, model_formats

SPLITS = ("pool", "dev", "test")
ASSETS = default_assets().probes  # the folder the default model's probes ship in
COMBINATION_ITEMS = 30  # bench_detectors.py's --per-relation for the shipped combinations
#: the demonstrations of README's /v1/completions example
README_DEMOS = ("context: The capital of Japan is Tokyo.\nquestion: What is the capital of Japan?\nanswer: Tokyo\n\n"
                "context: Nairobi is the capital city of Kenya.\nquestion: What is the capital of Kenya?\n"
                "answer: Nairobi\n\n"
                "context: The city of Lyon is located in France.\nquestion: Which country is the city of Lyon in?\n"
                "answer: France\n\n")
DEFAULT_WEIGHT = 3  # chosen on dev (design): every fit below repeats the default dataset's rows this often
DEFAULT_WEIGHTS = (0, 3, 10)  # design: the default dataset's rows alone, and weighted x3, x10 beside the broad rows


def default_splits(lm, out: Path) -> dict[str, ConflictDataset]:
    """The default dataset's memorised rows, split as the steering benchmark splits them (pool, dev, test)."""
    data = load_dataset("default", seed=PROMPT_SEED)
    memorised = memorised_subset(lm, data, seed=PROMPT_SEED, k_shot=K_SHOT, cache_dir=out / "default" / "closed-book")
    return dict(zip(SPLITS, benchmark_splits(memorised, data, BenchConfig())))


def default_features(lm, out: Path, sites: list[Site], names: list[str]) -> dict[str, dict[str, ProbingData]]:
    """Per split and format, the conflict features of the default dataset's memorised rows (no answers)."""
    data = load_dataset("default", seed=PROMPT_SEED)
    found: dict[str, dict[str, ProbingData]] = {}
    for split, items in default_splits(lm, out).items():
        for name in names:
            found.setdefault(split, {})[name] = collect(
                lm, data, sites, out / "default" / f"{split}-{name}", k_shot=K_SHOT, prompt_seed=PROMPT_SEED,
                answers=False, items=items, fmt=prompt_format(name, lm.tokenizer), progress=False)
    return found


def rounds(items: ConflictDataset, field: str | None, per_round: int, seed: int = 0) -> list[list[str]]:
    """Item ids in rounds: each round takes the next ``per_round`` (seeded order) of every value of ``field``
    (``None``: of all items), so a prefix of the rounds is a balanced sample."""
    groups: dict[str, list[str]] = {}
    for ex in items:
        groups.setdefault("all" if field is None else getattr(ex, field), []).append(ex.id)
    rng = random.Random(seed)
    for ids in groups.values():
        rng.shuffle(ids)
    n = max(len(ids) for ids in groups.values())
    return [[i for ids in groups.values() for i in ids[start:start + per_round]] for start in range(0, n, per_round)]


def generate_round(lm, data: ConflictDataset, ids: list[str], folder: Path, label: str, names: list[str],
                   batch_size: int) -> None:
    """The greedy answers to the sub prompts of ``ids`` in each format, cached as ``folder/<format>/<label>-*``."""
    wanted = set(ids)
    for name in names:
        start = time.perf_counter()
        prompts = condition_prompts(data, "sub", PROMPT_SEED, K_SHOT, fmt=prompt_format(name, lm.tokenizer))
        with tqdm(total=len(ids), disable=True) as bar:
            generate_keyed(lm, {k: p for k, p in prompts.items() if k in wanted}, batch_size, folder / name, label, bar)
        print(f"{label} {name}: {len(ids)} answers in {time.perf_counter() - start:.0f} s", flush=True)


def known_answers(signals: list[Path], names: list[str]) -> dict[str, dict[str, str]]:
    """Per format, the sub-prompt answers benchmarks/bench_detectors.py already generated (its ``signals-*.json``
    in ``signals[i]`` for ``names[i]``: the same prompts, the same greedy decoding), by item id."""
    found: dict[str, dict[str, str]] = {}
    for folder, name in zip(signals, names):
        for path in sorted(folder.glob("signals-*.json")):
            found.setdefault(name, {}).update({k: row["sub"] for k, row in json.loads(path.read_text()).items()})
    return found


def answers(lm, args: argparse.Namespace, names: list[str]) -> None:
    """Rounds of the broad items' sub-prompt answers, leaving out items answered in every format already (the
    default dataset's rows get none: the source probe is fitted on broad rows)."""
    broad = load_dataset("broad", seed=PROMPT_SEED)
    known = known_answers(args.signals, names) if args.signals else {}
    done = set.intersection(*(set(known.get(n, ())) for n in names))
    items = capped_items(lm, broad, args.run, args.per_relation)
    items = items.subset([i for i, ex in enumerate(items) if ex.id not in done])
    for r, ids in enumerate(rounds(items, "relation", args.per_round)):
        generate_round(lm, broad, ids, args.out / "answers" / "broad", f"r{r:02d}", names, args.batch_size)


@dataclass
class Table:
    """Every captured prompt as one row: its features per site, its labels, and where it comes from."""

    X: dict[Site, np.ndarray]
    conflict: np.ndarray  # 0: org prompt, 1: sub prompt
    source: np.ndarray  # sub rows: context / memory / other / "" (no answer); org rows ""
    fmt: np.ndarray
    part: np.ndarray  # broad, pool, dev, test
    relation: np.ndarray
    kind: np.ndarray
    group: np.ndarray

    @staticmethod
    def of(data: ProbingData, fmt: str, part: str, sites: list[Site], source: dict[str, str]) -> Table:
        """The org then sub rows of one capture (``source``: per item id its answer's label)."""
        items = list(data.items)
        n = len(items)

        def twice(values: list) -> np.ndarray:
            return np.array(values + values, dtype=object)

        return Table({s: np.concatenate([data.org[s].numpy(), data.sub[s].numpy()]) for s in sites},
                     np.repeat([0, 1], n), np.array([""] * n + [source.get(ex.id, "") for ex in items], dtype=object),
                     np.array([fmt] * 2 * n, dtype=object), np.array([part] * 2 * n, dtype=object),
                     twice([ex.relation for ex in items]), twice([ex.kind or "geography" for ex in items]),
                     twice([ex.group for ex in items]))

    @staticmethod
    def concat(tables: list[Table]) -> Table:
        return Table({s: np.concatenate([t.X[s] for t in tables]) for s in tables[0].X},
                     *(np.concatenate([getattr(t, f) for t in tables]) for f in FIELDS))

    def rows(self, mask: np.ndarray, target: str = "conflict") -> np.ndarray:
        """Indices of ``mask``'s rows for ``target`` (source: the sub rows answered from context or memory)."""
        if target == "source":
            mask = mask & np.isin(self.source, ("context", "memory"))
        return np.flatnonzero(mask)

    def labels(self, idx: np.ndarray, target: str = "conflict") -> np.ndarray:
        return self.conflict[idx] if target == "conflict" else (self.source[idx] == "context").astype(np.int64)


FIELDS = ("conflict", "source", "fmt", "part", "relation", "kind", "group")


def predictions(folders: list[Path], known: dict[str, dict[str, str]], names: list[str]) -> dict[str, dict[str, str]]:
    """Per format, every cached sub-prompt answer by item id (``folders``: answers/broad folders of any run)."""
    found = {name: dict(known.get(name, {})) for name in names}
    for folder in folders:
        for name in names:
            for path in sorted((folder / name).glob("*.jsonl")):
                for line in path.read_text(encoding="utf-8").splitlines():
                    row = json.loads(line)
                    found[name][row["key"]] = row["prediction"]
    return found


def build_table(lm, args: argparse.Namespace, names: list[str]) -> Table:
    """The broad capped items (without the questions of the default dataset's test split: those are test rows
    wherever they appear) and the default dataset's memorised rows, in every format, at blocks 10 and 13."""
    sites = [Site(10), Site(13)]
    broad = load_dataset("broad", seed=PROMPT_SEED)
    splits = default_splits(lm, args.out)
    test_questions = {ex.question for ex in splits["test"]}
    items = capped_items(lm, broad, args.run, args.per_relation)
    answers = predictions(sorted(args.out.glob("answers*/broad")), known_answers(args.signals or [], names), names)
    tables = []
    for name in names:
        data = capped_probing_data(lm, broad, [Site(7), *sites], args.run, args.per_relation, False, name, items)
        labels = {ex.id: answer_source(answers[name][ex.id], ex) for ex in items if ex.id in answers[name]}
        keep = [i for i, ex in enumerate(items) if ex.question not in test_questions]
        tables.append(Table.of(_rows(data, keep), name, "broad", sites, labels))
    for split, per_format in default_features(lm, args.out, sites, names).items():
        tables += [Table.of(data, name, split, sites, {}) for name, data in per_format.items()]
    return Table.concat(tables)


def split_masks(table: Table, seed: int) -> dict[str, np.ndarray]:
    """fit / dev / test rows: the broad question groups 70 / 30 (``seed``), the default dataset's pool / dev / test
    (the steering benchmark's splits)."""
    broad = table.part == "broad"
    groups = sorted(set(table.group[broad]))
    random.Random(seed).shuffle(groups)
    dev = broad & np.isin(table.group, groups[:round(TEST_FRACTION * len(groups))])
    return {"fit": (broad & ~dev) | (table.part == "pool"), "dev": dev | (table.part == "dev"),
            "test": table.part == "test"}


def fit(table: Table, idx: np.ndarray, site: Site, target: str, seed: int,
        model_hash: str | None = None) -> LinearProbe:
    return LinearProbe(seed=seed, site=str(site), model_hash=model_hash, **PROBE_PARAMS).fit(
        table.X[site][idx], table.labels(idx, target))


def score(y: np.ndarray, logit: np.ndarray, offset: float = 0.0) -> dict[str, float]:
    """Accuracy at ``offset`` (a logit threshold), AUROC, and the majority rate of ``y`` (the bar to clear)."""
    rate = float(np.mean(y))
    return {"accuracy": float(np.mean((logit > offset) == y)),
            "auroc": float(roc_auc_score(y, logit)) if 0 < rate < 1 else float("nan"),
            "majority": max(rate, 1 - rate), "n": int(len(y))}


def best_offset(y: np.ndarray, logit: np.ndarray) -> float:
    """The logit threshold with the best accuracy on ``(y, logit)`` (one per prompt format: candidate b)."""
    order = np.sort(logit)
    candidates = np.concatenate([[order[0] - 1], (order[1:] + order[:-1]) / 2, [order[-1] + 1]])
    return float(candidates[int(np.argmax([np.mean((logit > c) == y) for c in candidates]))])


def by_format(table: Table, idx: np.ndarray, logit: np.ndarray, target: str,
              offsets: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """Scores of the rows ``idx`` (their ``logit``) per prompt format, and over all formats (``all``)."""
    y, fmts = table.labels(idx, target), table.fmt[idx]
    out = {}
    for name in [*dict.fromkeys(fmts), "all"]:
        keep = np.ones(len(idx), bool) if name == "all" else fmts == name
        shift = np.array([(offsets or {}).get(f, 0.0) for f in fmts[keep]])
        out[name] = score(y[keep], logit[keep] - shift)
    return out


def cross_offsets(table: Table, idx: np.ndarray, logit: np.ndarray, target: str) -> dict[str, dict[str, float]]:
    """Candidate (b) scored without seeing its own rows: per format, the offset chosen on half of ``idx``'s
    question groups scores the other half, and the other way round."""
    groups = sorted(set(table.group[idx]))
    half = np.isin(table.group[idx], groups[::2])
    y, fmts = table.labels(idx, target), table.fmt[idx]
    adjusted = logit.copy()
    for name in set(fmts):
        for chosen in (half, ~half):
            on, apply = chosen & (fmts == name), ~chosen & (fmts == name)
            if len(set(y[on].tolist())) == 2:
                adjusted[apply] = logit[apply] - best_offset(y[on], logit[on])
    return by_format(table, idx, adjusted, target)


def mean_runs(runs: list[dict]) -> dict:
    """Nested dicts of numbers averaged over runs (the leaves' mean; ``n`` kept)."""
    if not isinstance(runs[0], dict):
        return round(float(np.nanmean(runs)), 4)
    return {k: mean_runs([r[k] for r in runs]) for k in runs[0]}


def weighted(table: Table, mask: np.ndarray, weight: int, target: str = "conflict") -> np.ndarray:
    """The ``target`` rows of ``mask``, the default dataset's repeated ``weight`` times (0: the default's alone)."""
    idx = table.rows(mask, target)
    default = idx[table.part[idx] != "broad"]
    return default if weight == 0 else np.concatenate([idx, *[default] * (weight - 1)])


def design(table: Table, shipped: dict[str, LinearProbe], seeds: list[int]) -> dict:
    """On dev only: per target, layer and candidate ((a) one threshold, (b) one per format), and for the shipped
    probe, the scores per format on the dev rows of the broad corpus and of the default dataset, mean over seeds."""
    runs: dict = {}
    for seed in seeds:
        masks = split_masks(table, seed)
        for target in ("conflict", "source"):
            for site in (Site(10), Site(13)):
                fitted = {"a": fit(table, table.rows(masks["fit"], target), site, target, seed)}
                if target == "conflict":  # does weighting the default dataset's rows buy back its three_shot rows?
                    fitted.update({f"a, default rows x{w}": fit(table, weighted(table, masks["fit"], w), site, target,
                                                                seed) for w in DEFAULT_WEIGHTS})
                for part in ("broad", "dev"):
                    idx = table.rows(masks["dev"] & (table.part == part), target)
                    if not len(idx):
                        continue
                    cell = runs.setdefault(target, {}).setdefault(f"{site}", {})
                    for label, probe in fitted.items():
                        logit = probe.decision_function(table.X[site][idx])
                        cell.setdefault(label, {}).setdefault(part, []).append(by_format(table, idx, logit, target))
                    logit = fitted["a"].decision_function(table.X[site][idx])
                    cell.setdefault("b", {}).setdefault(part, []).append(cross_offsets(table, idx, logit, target))
                    if site == Site.parse(shipped[target].site):
                        ship = shipped[target].decision_function(table.X[site][idx])
                        cell.setdefault("shipped", {}).setdefault(part, []).append(by_format(table, idx, ship, target))
                print("design", seed, target, site, flush=True)
    return {t: {s: {c: {p: mean_runs(r) for p, r in parts.items()} for c, parts in cands.items()}
                for s, cands in sites.items()} for t, sites in runs.items()}


def leave_out(table: Table, usable: np.ndarray, field: str, folds: list[str], target: str, site: Site,
              seeds: list[int]) -> dict:
    """Per held-out value of ``field`` (relation, kind, format): fitted on the ``usable`` rows of every other value,
    scored per format on this one (mean over ``seeds``); ``summary``: per format the mean and the worst fold."""
    values = getattr(table, field)
    per_fold = {}
    for value in folds:
        train = weighted(table, usable & (values != value), DEFAULT_WEIGHT, target)
        test = table.rows(usable & (values == value), target)
        if len(set(table.labels(test, target).tolist())) < 2 or len(set(table.labels(train, target).tolist())) < 2:
            continue
        per_fold[value] = mean_runs([by_format(table, test, fit(table, train, site, target, seed)
                                               .decision_function(table.X[site][test]), target) for seed in seeds])
        print(field, value, per_fold[value]["all"], flush=True)
    return {"folds": per_fold, "summary": fold_summary(per_fold)}


def fold_summary(per_fold: dict) -> dict:
    """Per format (and ``all``): accuracy and AUROC mean and worst over the folds, and the mean majority rate."""
    names = dict.fromkeys(n for fold in per_fold.values() for n in fold)
    out = {}
    for name in names:
        cells = [fold[name] for fold in per_fold.values() if name in fold]
        out[name] = {**{f"{m}_{how}": round(float(agg([c[m] for c in cells])), 4) for m in ("accuracy", "auroc")
                        for how, agg in (("mean", np.nanmean), ("worst", np.nanmin))},
                     "majority_mean": round(float(np.mean([c["majority"] for c in cells])), 4), "folds": len(cells)}
    return out


def shipped_scores(table: Table, probe: LinearProbe, idx: np.ndarray, target: str, field: str | None = None) -> dict:
    """The shipped ``probe`` on the rows ``idx`` per format; with ``field``, per value of it and their summary."""
    logit = probe.decision_function(table.X[Site.parse(probe.site)][idx])
    if field is None:
        return by_format(table, idx, logit, target)
    values = getattr(table, field)[idx]
    folds = {v: by_format(table, idx[values == v], logit[values == v], target) for v in dict.fromkeys(values)}
    return {"folds": folds, "summary": fold_summary(folds)}


def held_out_groups(table: Table, shipped: LinearProbe, site: Site, seeds: list[int]) -> dict:
    """The source probe in distribution: fitted on the design's fit rows, scored on its dev rows (30 % of the broad
    question groups), per split seed; the shipped source probe on the same rows."""
    runs: dict = {"refit": [], "shipped": []}
    for seed in seeds:
        masks = split_masks(table, seed)
        dev = table.rows(masks["dev"], "source")
        probe = fit(table, table.rows(masks["fit"], "source"), site, "source", seed)
        runs["refit"].append(by_format(table, dev, probe.decision_function(table.X[site][dev]), "source"))
        runs["shipped"].append(shipped_scores(table, shipped, dev, "source"))
    return {label: mean_runs(r) for label, r in runs.items()}


def test_tables(table: Table, shipped: dict[str, LinearProbe], sites: dict[str, Site], seeds: list[int],
                target: str) -> dict:
    """The refit (fitted on every non-test row) against the shipped probe of ``target``. conflict: on the default
    dataset's test split per format, and held out per broad relation outside the default set; source: held out per
    format, kind and relation (the shipped source probe on the same rows beside it)."""
    masks = split_masks(table, 0)
    usable = masks["fit"] | masks["dev"]
    site = sites[target]
    if target == "source":
        rows = table.rows(usable, "source")
        out = {f"shipped_{f}": shipped_scores(table, shipped["source"], rows, "source", f)
               for f in ("relation", "kind")}
        out["groups"] = held_out_groups(table, shipped["source"], site, seeds)
        for field in ("fmt", "kind", "relation"):
            folds = sorted(set(getattr(table, field)[rows]))
            out[field] = leave_out(table, usable, field, folds, "source", site, seeds)
        return out
    test = table.rows(masks["test"])
    refit = [fit(table, weighted(table, usable, DEFAULT_WEIGHT), site, "conflict", seed)
             .decision_function(table.X[site][test]) for seed in seeds]
    out = {"default_test": {"shipped": shipped_scores(table, shipped["conflict"], test, "conflict"),
                            "refit": mean_runs([by_format(table, test, logit, "conflict") for logit in refit])}}
    print("default test", json.dumps(out["default_test"]), flush=True)
    broad = table.part == "broad"
    outside = sorted(set(table.relation[broad]) - set(table.relation[table.part == "pool"]))
    out["relation"] = {"refit": leave_out(table, usable, "relation", outside, "conflict", site, seeds[:1]),
                       "shipped": shipped_scores(table, shipped["conflict"],
                                                 table.rows(broad & np.isin(table.relation, outside)), "conflict",
                                                 "relation")}
    return out


def shipped_recipe(table: Table, seeds: list[int]) -> dict:
    """The shipped conflict probe's recipe (the default dataset's three_shot rows, block 13) refitted on the pool and
    dev splits only, on the test split per format: the shipped probe was fitted on the test rows too, so this is
    the held-out three_shot accuracy the refit gives up against."""
    masks = split_masks(table, 0)
    train = table.rows((table.part != "broad") & ~masks["test"] & (table.fmt == "three_shot"))
    test, site = table.rows(masks["test"]), Site(13)
    return mean_runs([by_format(table, test, fit(table, train, site, "conflict", seed).decision_function(
        table.X[site][test]), "conflict") for seed in seeds])


def write_assets(table: Table, lm, sites: dict[str, Site], folder: Path, record: dict) -> dict:
    """The conflict and source probes fitted on every non-test row (seed 0) into ``folder``; each config records
    how (``record``)."""
    masks = split_masks(table, 0)
    usable = masks["fit"] | masks["dev"]
    counts = {}
    for target, site in sites.items():
        idx = table.rows(usable, target)
        counts[target] = {f: int(np.sum(table.fmt[idx] == f)) for f in dict.fromkeys(table.fmt[idx])}
        fit(table, weighted(table, usable, DEFAULT_WEIGHT, target), site, target, 0, lm.info.model_hash).save(
            folder / target, **record, rows=counts[target])
    return {"rows": counts}


def readme_readings(lm, names: list[str], folder: Path | None = None) -> dict:
    """README's France / Porto-Novo example read by the probes in ``folder`` (default: the shipped ones): the
    conflict and its true twin in each format, and the raw prompts of README's /v1/completions examples."""
    out: dict = {}
    for name in names:
        for label, context in (("conflict", "The capital of France is Porto-Novo."),
                               ("truth", "The capital of France is Paris.")):
            r = detect(lm, "What is the capital of France?", context, folder, prompt_format=name)
            out[f"{name} {label}"] = {k: r.get(k) for k in ("conflict_probability", "predicted_source",
                                                            "in_distribution", "distance")}
    line = "context: The capital of France is Porto-Novo.\nquestion: What is the capital of France?\nanswer:"
    for label, text in (("completions, three demonstrations", README_DEMOS + line),
                        ("completions, the line alone", line)):
        r = detect_prompt(lm, text, folder)
        out[label] = {k: r.get(k) for k in ("conflict_probability", "predicted_source", "in_distribution", "distance")}
    for k, v in out.items():
        print(k, v, flush=True)
    return out


def refit_combinations(lm, args: argparse.Namespace) -> dict:
    """detectors.json for the new conflict probe: probe+jsd and probe+disagreement refitted as
    bench_detectors.py --save-combinations fits them (its 124 three_shot items, their cached signals)."""
    broad = load_dataset("broad", seed=PROMPT_SEED)
    train = capped_probing_data(lm, broad, [Site(7), Site(10), Site(13)], args.run, COMBINATION_ITEMS, False)
    items = detection_items(train.items, 8, seed=0)
    return fit_combinations(lm, train, signals(lm, broad, items, args.signals[0]), items, ASSETS,
                            "benchmarks/ship_probes.py write (three_shot signals)")


def shipped_before(out: Path, model_hash: str) -> dict[str, LinearProbe]:
    """The probes shipped before this refit, frozen under ``out/shipped-before`` on the first run (the asset folder
    is then overwritten by ``write``)."""
    frozen = out / "shipped-before"
    if not frozen.is_dir():
        shutil.copytree(ASSETS, frozen)
    return load_probes(frozen, model_hash).probes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("capture", "answers", "design", "test", "recipe", "write", "readings"))
    parser.add_argument("--run", type=Path, default=Path("runs/broad-probe"))
    parser.add_argument("--out", type=Path, default=Path("runs/ship"))
    parser.add_argument("--per-relation", type=int, default=80)
    parser.add_argument("--layers", default="10,13")
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--probe", type=Path, default=None, help="readings: this probe folder (default: the shipped)")
    parser.add_argument("--target", choices=("conflict", "source"), default="conflict", help="test: which probe")
    parser.add_argument("--conflict-layer", type=int, default=10, help="chosen on dev (design)")
    parser.add_argument("--source-layer", type=int, default=10, help="chosen on dev (design)")
    parser.add_argument("--signals", type=lambda v: [Path(p) for p in v.split(",")], default=None,
                        help="bench_detectors.py output folders holding answers already, one per format, in the "
                             "order of the model's formats")
    args = parser.parse_args()
    lm = sparekit.load_model("default")
    names = model_formats(lm)
    if args.step == "capture":
        start = time.perf_counter()
        default_features(lm, args.out, [Site(int(layer)) for layer in args.layers.split(",")], names)
        print(f"default captured in {time.perf_counter() - start:.0f} s", flush=True)
        return
    if args.step == "answers":
        answers(lm, args, names)
        return
    if args.step == "readings":
        atomic_write_json(args.out / "readings.json", readme_readings(lm, names, args.probe))
        return
    shipped = shipped_before(args.out, lm.info.model_hash)
    table = build_table(lm, args, names)
    seeds = [int(s) for s in args.seeds.split(",")]
    sites = {"conflict": Site(args.conflict_layer), "source": Site(args.source_layer)}
    counts = {f: {lab: int(np.sum((table.fmt == f) & (table.source == lab)))
                  for lab in ("context", "memory", "other", "")} for f in names}
    print("source labels per format", counts, flush=True)
    if args.step == "design":
        result = {"source_labels": counts, "design": design(table, shipped, seeds)}
    elif args.step == "recipe":
        result = {"shipped_recipe": shipped_recipe(table, seeds)}
    elif args.step == "test":
        result = {"source_labels": counts, "test": test_tables(table, shipped, sites, seeds, args.target)}
    else:
        record = {"command": "python benchmarks/ship_probes.py write " + " ".join(f"--{k.replace('_', '-')} {v}"
                  for k, v in (("conflict_layer", args.conflict_layer), ("source_layer", args.source_layer))),
                  "data": f"broad (at most {args.per_relation} memorised items per relation, the questions of the "
                          "default test split left out) + default (memorised rows of the steering pool and dev splits, "
                          f"each repeated {DEFAULT_WEIGHT} times)",
                  "formats": names, "relations": sorted(set(table.relation)), "seed": 0,
                  "sparekit_version": sparekit.__version__, "source_label": "evaluation.metrics.answer_source"}
        result = write_assets(table, lm, sites, ASSETS, record)
        result["combinations"] = refit_combinations(lm, args)
    atomic_write_json(args.out / f"{args.step}{'-' + args.target if args.step == 'test' else ''}.json", result)
    print(json.dumps(result)[:3000], flush=True)


if __name__ == "__main__":
    main()
