"""The probing experiment: features and labels from a conflict dataset, per-layer probe metrics.

Following the probing paper, only *memorised* items are used (the model answers them
correctly closed-book). Each item is asked twice with the same ``org_org`` few-shot
demonstrations: with ``org_context`` (no conflict, label 0) and with ``sub_context``
(conflict, label 1). Features are the last prompt token's hidden state at each site.
Two targets:

- ``conflict``: org vs sub prompt, over all memorised items;
- ``source``: among the sub prompts, will the model answer from the context (1) or from
  memory (0), labelled by its own greedy answer; items answering neither are dropped.

Metrics are computed on held-out question groups, for several seeds (seed = split and
probe initialisation), as mean ± std.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sparekit import __version__
from sparekit.activations import capture_activations
from sparekit.data import ConflictDataset, load_dataset, split_by_group
from sparekit.data.dataset import breadth_draws, held_out_values
from sparekit.data.formats import DEFAULT_FORMAT, FORMATS, PromptFormat, prompt_format
from sparekit.data.prompts import THREE_SHOT, sample_demos
from sparekit.errors import SparekitError
from sparekit.utils.registry import unknown_name
from sparekit.evaluation.harness import (condition_prompts, dataset_fingerprint, generate_keyed, mean_std,
                                         memorised_subset)
from sparekit.evaluation.metrics import behaviour_label
from sparekit.hooks import Site
from sparekit.models import load_model
from sparekit.models.loading import LoadedModel
from sparekit.probes.linear import LinearProbe
from sparekit.probes.plots import plot_components, plot_layer_metrics
from sparekit.probes.stats import compare_behaviours
from sparekit.utils.env import seed_everything
from sparekit.utils.io import atomic_write_json, cache_dir
from sparekit.utils.rundir import RunDir, run_path
from sparekit.utils.config import check_components, config_dict, device_field, device_map_field, model_field, option, parse_layers

TARGETS = ("conflict", "source")
PROMPT_SEED = 42  # the --limit sample and the demonstrations of the probing prompts
TEST_FRACTION = 0.3
PROBE_PARAMS = {"l1": 6e-4, "lr": 2e-3, "epochs": 20, "batch_size": 64, "standardize": True}
METRICS = ("accuracy", "auroc", "auprc", "majority_accuracy")
MIN_ITEMS = 8
SPLITS = ("group", "relation", "kind", "format")


@dataclass
class ProbingData:
    """Features of the org and sub prompts of ``items`` at ``sites``, and the model's behaviour on sub."""

    items: ConflictDataset
    org: dict[Site, torch.Tensor]
    sub: dict[Site, torch.Tensor]
    behaviour: list[str]
    #: per item row, the prompt format it was asked in (:func:`stack_formats`); ``None``: one format
    formats: list[str] | None = None

    def target(self, name: str, site: Site) -> tuple[torch.Tensor, np.ndarray, list[str]]:
        """``(X, y, row_ids)`` of one target; ``row_ids`` ties rows to items for group splits."""
        ids = [ex.id for ex in self.items]
        if name == "conflict":
            return (torch.cat([self.org[site], self.sub[site]]), np.repeat([0, 1], len(ids)), ids + ids)
        if name == "source":
            keep = [i for i, b in enumerate(self.behaviour) if b in ("context", "memory")]
            y = np.array([int(self.behaviour[i] == "context") for i in keep])
            return self.sub[site][keep], y, [ids[i] for i in keep]
        raise unknown_name("probe target", name, TARGETS)

    def source_items(self) -> ConflictDataset:
        return self.items.subset([i for i, b in enumerate(self.behaviour) if b in ("context", "memory")])

    def counts(self) -> dict[str, int]:
        return {label: self.behaviour.count(label) for label in ("context", "memory", "other")}


def collect(lm: LoadedModel, dataset: ConflictDataset, sites: Sequence[Site], work_dir: str | Path, *,
            k_shot: int = 3, prompt_seed: int = 42, batch_size: int = 8, progress: bool = True,
            answers: bool = True, items: ConflictDataset | None = None, fmt: PromptFormat = THREE_SHOT) -> ProbingData:
    """Memorised items of ``dataset``, their org/sub features at ``sites`` and the model's behaviour.

    Activations and predictions are cached under ``work_dir``: a rerun resumes. ``answers=False``
    skips the conflict answers (the behaviour stays empty, so only the conflict target can be fitted).
    ``items``: memorised rows of ``dataset`` known already (a capped sample of another run's); their
    prompts still draw demonstrations from all of ``dataset``. ``fmt``: the prompt format of the
    org/sub prompts (memorisation stays the default closed-book test, so every format probes the
    same items).
    """
    work_dir = Path(work_dir)
    if items is None:
        items = memorised_subset(lm, dataset, seed=prompt_seed, k_shot=k_shot, batch_size=batch_size,
                                 cache_dir=work_dir / "closed-book")
    if len(items) < MIN_ITEMS:
        raise SparekitError(f"only {len(items)} of {len(dataset)} items of {dataset.name} are memorised by "
                            f"{lm.info.name}; probing needs at least {MIN_ITEMS}",
                            "use a larger --limit or a dataset the model knows better")
    prompts = {c: condition_prompts(dataset, c, prompt_seed, k_shot, fmt=fmt) for c in ("org", "sub")}
    org = [prompts["org"][ex.id] for ex in items]
    sub = [prompts["sub"][ex.id] for ex in items]
    store = capture_activations(lm, org + sub, sites, work_dir / "activations", positions="last",
                                ids=[f"org:{ex.id}" for ex in items] + [f"sub:{ex.id}" for ex in items],
                                dtype=torch.float32, batch_size=batch_size, max_length=None, shard_rows=64,
                                progress=progress)
    n = len(items)
    features = {site: store.load(site) for site in sites}
    if not answers:
        return ProbingData(items, {s: f[:n] for s, f in features.items()}, {s: f[n:] for s, f in features.items()}, [])
    with tqdm(total=n, desc="conflict answers", unit="prompt", disable=not progress, leave=False) as bar:
        predictions = generate_keyed(lm, {ex.id: p for ex, p in zip(items, sub)}, batch_size,
                                      work_dir / "predictions", "sub", bar)
    behaviour = [behaviour_label(predictions[ex.id], ex, dataset.context_match) for ex in items]
    return ProbingData(items, {s: f[:n] for s, f in features.items()}, {s: f[n:] for s, f in features.items()},
                       behaviour)


def stack_formats(per_format: dict[str, ProbingData]) -> ProbingData:
    """The same items captured in several prompt formats as one :class:`ProbingData`, rows tagged by format.

    Row ids become ``id@format`` (unique) while question groups stay, so a group split keeps all of an
    item's formats on one side, and ``leave_one_out(..., "format")`` holds a whole format out.
    """
    names = list(per_format)
    first = per_format[names[0]]
    for name in names[1:]:
        if [ex.id for ex in per_format[name].items] != [ex.id for ex in first.items]:
            raise SparekitError(f"prompt format {name!r} was captured on other items than {names[0]!r}",
                                "capture the same items in every format")
    rows = [replace(ex, id=f"{ex.id}@{name}") for name in names for ex in per_format[name].items]
    return ProbingData(ConflictDataset(rows, first.items.name, first.items.context_match),
                       {s: torch.cat([per_format[n].org[s] for n in names]) for s in first.org},
                       {s: torch.cat([per_format[n].sub[s] for n in names]) for s in first.sub},
                       [b for n in names for b in per_format[n].behaviour],
                       [n for n in names for _ in first.items])


def fold_values(data: ProbingData, field: str) -> tuple[dict[str, str], list[str]]:
    """Per row id its value of ``field`` (``relation``, ``kind`` or ``format``), and the values a
    leave-one-out protocol holds out in turn (one-line errors where there is nothing to split)."""
    if field != "format":
        return {ex.id: getattr(ex, field) for ex in data.items}, held_out_values(data.items, field)
    names = list(dict.fromkeys(data.formats or ()))
    if len(names) < 2:
        raise SparekitError("leave-one-format-out needs the same items asked in at least two prompt formats",
                            "pass several, e.g. --prompt-format three_shot,zero_shot,rag")
    return {ex.id: name for ex, name in zip(data.items, data.formats or ())}, names


def _scores(y: np.ndarray, p: np.ndarray, y_train: np.ndarray) -> dict[str, float]:
    """Held-out metrics, and the accuracy of always answering the training majority class (the bar to clear)."""
    from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score  # not for `probe --help`

    if len(set(y.tolist())) < 2:
        raise SparekitError("a held-out split has a single class, so AUROC is undefined",
                            "use more items (--limit) or fewer held-out groups")
    return {"accuracy": float(accuracy_score(y, p > 0.5)), "auroc": float(roc_auc_score(y, p)),
            "auprc": float(average_precision_score(y, p)),
            "majority_accuracy": float(np.mean(y == int(y_train.mean() >= 0.5)))}


def _mean_std(runs: list[dict[str, float]]) -> dict[str, dict[str, float | None]]:
    return {m: mean_std([r[m] for r in runs]) for m in METRICS}


def cross_validate(data: ProbingData, target: str, site: Site, seeds: Sequence[int], test_fraction: float = 0.3,
                   probe_params: dict | None = None) -> dict[str, dict[str, float]]:
    """Held-out-group metrics of a probe on ``target`` at ``site``, mean/std over ``seeds``."""
    X, y, row_ids = data.target(target, site)
    items = data.items if target == "conflict" else data.source_items()
    if len(items.groups()) < 4:
        raise SparekitError(f"too few question groups ({len(items.groups())}) for a {target} probe split",
                            "use a larger --limit")
    runs = []
    for seed in seeds:
        train_items, _ = split_by_group(items, [1 - test_fraction, test_fraction], seed)
        train_ids = {ex.id for ex in train_items}
        train = np.array([i in train_ids for i in row_ids])
        probe = LinearProbe(seed=seed, **(probe_params or {})).fit(X[train], y[train])
        runs.append(_scores(y[~train], probe.predict_proba(X[~train])[:, 1], y[train]))
    return _mean_std(runs)


def leave_one_relation_out(data: ProbingData, target: str, site: Site, seeds: Sequence[int],
                           probe_params: dict | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`leave_one_out` over relations."""
    return leave_one_out(data, target, site, seeds, probe_params, "relation")


def leave_one_out(data: ProbingData, target: str, site: Site, seeds: Sequence[int], probe_params: dict | None = None,
                  field: str = "relation") -> dict[str, dict[str, dict[str, float]]]:
    """Per value of ``field`` (``relation``, ``kind`` or ``format``): a probe fitted on every other value, scored
    on this one (mean/std over ``seeds``).

    Also ``"mean"``: per metric the mean over held-out folds of each fold's mean, the std across folds
    (the spread), and the ``worst`` and ``best`` fold. A fold whose held-out rows (or training rows) hold
    one class only is left out of the mean and named in ``"skipped"``. Generalisation to relations or
    kinds of knowledge (or prompt formats) never seen is what a deployed probe faces.
    """
    X, y, row_ids = data.target(target, site)
    value_of, values = fold_values(data, field)
    rows = np.array([value_of[i] for i in row_ids], dtype=object)
    folds: dict = {}
    skipped = []
    for value in values:
        test = rows == value
        if test.all() or not test.any():
            raise SparekitError(f"{target} probe: no {'training' if test.all() else 'held-out'} rows when "
                                f"holding out {field} {value!r}", "use a larger --limit")
        if len(set(y[test].tolist())) < 2 or len(set(y[~test].tolist())) < 2:
            skipped.append(value)
            continue
        runs = [_scores(y[test], LinearProbe(seed=s, **(probe_params or {})).fit(X[~test], y[~test])
                        .predict_proba(X[test])[:, 1], y[~test]) for s in seeds]
        folds[value] = _mean_std(runs)
    if not folds:
        raise SparekitError(f"{target} probe: every held-out {field} has a single class", "use a larger --limit")
    mean = {}
    for m in METRICS:
        values = [fold[m]["mean"] for fold in folds.values()]
        mean[m] = {**mean_std(values), "worst": min(values), "best": max(values)}
    return {"mean": mean, **folds, "skipped": skipped}


def breadth_curve(data: ProbingData, site: Site, sizes: Sequence[int], draws: int, seed: int = 0,
                  target: str = "conflict", probe_params: dict | None = None,
                  held_out: Sequence[str] | None = None) -> dict[int, dict]:
    """Does breadth buy transfer? Per number of training relations ``k``: ``draws`` times, hold out one
    relation drawn at random (or the fixed ``held_out`` set) and fit on ``k`` others drawn at random
    (:func:`~sparekit.data.dataset.breadth_draws`); the held-out scores' mean/std over the draws (``n``: the
    draws scored; a draw whose held-out rows hold one class is left out).
    """
    X, y, row_ids = data.target(target, site)
    relation_of = {ex.id: ex.relation for ex in data.items}
    rows = np.array([relation_of[i] for i in row_ids], dtype=object)
    relations = held_out_values(data.items, "relation")
    curve: dict[int, dict] = {}
    for k in sizes:
        runs = []
        for draw, (held, fit_on) in enumerate(breadth_draws(relations, k, draws, seed, held_out)):
            train, test = np.isin(rows, fit_on), np.isin(rows, held)
            if len(set(y[test].tolist())) < 2 or len(set(y[train].tolist())) < 2:
                continue
            probe = LinearProbe(seed=draw, **(probe_params or {})).fit(X[train], y[train])
            runs.append(_scores(y[test], probe.predict_proba(X[test])[:, 1], y[train]))
        curve[k] = {**_mean_std(runs), "n": len(runs)}
    return curve


def transfer(train: ProbingData, test: ProbingData, target: str, site: Site, seeds: Sequence[int],
             probe_params: dict | None = None) -> dict[str, dict[str, float]]:
    """Fit on all of ``train`` and score on all of ``test`` (another dataset), mean/std over seeds."""
    X, y, _ = train.target(target, site)
    X_test, y_test, _ = test.target(target, site)
    runs = [_scores(y_test, LinearProbe(seed=s, **(probe_params or {})).fit(X, y).predict_proba(X_test)[:, 1], y)
            for s in seeds]
    return _mean_std(runs)


def layer_table(per_site: dict[Site, dict[str, dict[str, float]]], sites: Sequence[Site]) -> dict:
    """Per-metric ``{"mean": [...], "std": [...]}`` lists in the order of ``sites``, plus ``best_layer``."""
    table: dict = {m: {k: [per_site[s][m][k] for s in sites] for k in ("mean", "std", "worst")
                       if k in per_site[sites[0]][m]} for m in METRICS}
    best = max(range(len(sites)), key=lambda i: (table["accuracy"]["mean"][i], table["auroc"]["mean"][i]))
    table["best_layer"] = sites[best].layer
    return table


def fit_probe(data: ProbingData, target: str, site: Site, seed: int, model_hash: str,
              probe_params: dict | None = None) -> LinearProbe:
    """The deployable probe: fitted on every row of ``target`` at ``site``."""
    X, y, _ = data.target(target, site)
    return LinearProbe(seed=seed, site=str(site), model_hash=model_hash, **(probe_params or {})).fit(X, y)


def _tables(sites: dict[str, list[Site]], comps: list[str], score: Callable[[str, Site], dict]) -> dict:
    """Per component and target, the layer table; a target without enough data gets an ``error``."""
    out: dict = {}
    for c in comps:
        for t in TARGETS:
            try:
                out.setdefault(c, {})[t] = layer_table({s: score(t, s) for s in sites[c]}, sites[c])
            except SparekitError as exc:
                out.setdefault(c, {})[t] = {"error": str(exc)}
    return out


@dataclass
class ProbeExperiment:
    """``sparekit probe``: per-layer conflict/source probes on a dataset, saved with plots in a run directory."""

    dataset: str = option("default", help="default, default-passages, broad, broad-passages, nqswap or a .jsonl(.gz) path.")
    eval_dataset: str | None = option(None, help="Also score probes fitted on --dataset on this dataset.")
    model: str = model_field()
    layers: str = option("all", help="all, 6, 4,8,12 or 4-8.")
    components: tuple[str, ...] = option(("resid",), help="resid, attn, mlp (comma-separated).")
    limit: int | None = option(None, min=1, help="Seeded sample of N rows (whole question groups).")
    seeds: tuple[int, ...] = option((0, 1, 2), help="Comma-separated split/probe seeds.")
    split_by: str = option("group", choices=SPLITS,
                           help="group: held-out question groups; relation / kind / format: leave one relation / "
                                "kind of knowledge / prompt format out (fit on the others), per held-out fold and "
                                "their mean and worst.")
    k_shot: int = option(3, min=0, max=16, help="Demonstrations per prompt.")
    prompt_format: tuple[str, ...] = option((DEFAULT_FORMAT,),
                                            help=f"Prompt format(s) of the probed prompts ({', '.join(FORMATS)}; "
                                                 "three_shot: the shipped steering's; formats without demonstrations "
                                                 "ignore --k-shot); several: the same items in each, fitted together.")
    batch_size: int = option(8, min=1, help="Prompts per forward pass.")
    out: str | None = option(None, help="Run directory (default: under the cache, keyed by the configuration; "
                                        "reruns resume).")
    device: str | None = device_field()
    device_map: str | None = device_map_field()

    def run(self, progress: bool = True) -> dict:
        """Fit and score the probes; returns the result table (also ``results.json`` in the run directory)."""
        if not self.seeds:
            raise SparekitError("--seeds is empty")
        comps = check_components(self.components)
        data_a = load_dataset(self.dataset, limit=self.limit, seed=PROMPT_SEED)
        for name in self.prompt_format:  # bad input fails before the model loads
            FORMATS.lookup(name)
        if self.split_by == "format" and len(self.prompt_format) < 2:
            raise SparekitError("--split-by format needs at least two prompt formats to hold out in turn",
                                "pass several, e.g. --prompt-format three_shot,zero_shot,rag")
        if self.split_by not in ("group", "format"):
            held_out_values(data_a, self.split_by)
        data_b = load_dataset(self.eval_dataset, limit=self.limit, seed=PROMPT_SEED) if self.eval_dataset else None
        lm = load_model(self.model, device=self.device, device_map=self.device_map)
        layer_list = parse_layers(self.layers, lm.info.n_layers)
        config = {"kind": "probe_run", "sparekit_version": __version__, "model": self.model,
                  "model_hash": lm.info.model_hash, "dataset": self.dataset,
                  "dataset_sha256": dataset_fingerprint(data_a), "limit": self.limit, "eval_dataset": self.eval_dataset,
                  "eval_dataset_sha256": data_b and dataset_fingerprint(data_b), "layers": layer_list,
                  "components": comps, "seeds": list(self.seeds), "k_shot": self.k_shot, "prompt_seed": PROMPT_SEED,
                  "split_by": self.split_by, "test_fraction": TEST_FRACTION, "probe": PROBE_PARAMS}
        if tuple(self.prompt_format) != (DEFAULT_FORMAT,):  # only then: the default's run folders keep their keys
            config["prompt_format"] = ",".join(self.prompt_format)
        run_dir = Path(self.out) if self.out else run_path(cache_dir() / "probes", Path(self.model).name,
                                                           Path(self.dataset).name, config=config)
        with RunDir(run_dir, "probe run").session(config, experiment=config_dict(self)):
            return self._run(lm, data_a, data_b, layer_list, comps, run_dir, progress)

    def _collect(self, lm: LoadedModel, dataset: ConflictDataset, sites: list[Site], work_dir: Path,
                 progress: bool) -> ProbingData:
        """:func:`collect` in each --prompt-format, the memorised items found once (the first format keeps
        ``work_dir``, as a one-format run does; the others ``work_dir-<format>``), stacked by
        :func:`stack_formats` when there are several."""
        found: dict[str, ProbingData] = {}
        items = None
        for name in self.prompt_format:
            folder = work_dir.with_name(f"{work_dir.name}-{name}") if found else work_dir
            found[name] = collect(lm, dataset, sites, folder, k_shot=self.k_shot, prompt_seed=PROMPT_SEED,
                                  batch_size=self.batch_size, progress=progress, items=items,
                                  fmt=prompt_format(name, lm.tokenizer))
            items = found[name].items
        return next(iter(found.values())) if len(found) == 1 else stack_formats(found)

    def _held_out_tables(self, train: ProbingData, sites: dict[str, list[Site]], comps: list[str],
                         seeds: list[int]) -> tuple[dict, dict | None]:
        """Per component, the layer tables on held-out groups (``split_by`` group) or the mean over held-out
        relations / kinds, with each fold's table of the main component."""
        if self.split_by == "group":
            return _tables(sites, comps, lambda t, s: cross_validate(train, t, s, seeds, TEST_FRACTION)), None
        cache: dict = {}

        def held_out(t: str, s: Site, fold: str) -> dict:
            if (t, s) not in cache:
                cache[t, s] = leave_one_out(train, t, s, seeds, PROBE_PARAMS, self.split_by)
            if fold not in cache[t, s]:
                raise SparekitError(f"held-out {self.split_by} {fold!r} has a single {t} class")
            return cache[t, s][fold]

        per_fold = {v: _tables(sites, comps, lambda t, s: held_out(t, s, v))[comps[0]]
                    for v in fold_values(train, self.split_by)[1]}
        return _tables(sites, comps, lambda t, s: held_out(t, s, "mean")), per_fold

    def _save_probes(self, lm: LoadedModel, train: ProbingData, data_a: ConflictDataset, result: dict,
                     probes_dir: Path) -> Path:
        """The best layer's probe per fitted target, and ``detect.json``: the demonstrations request-time
        prompts take (:func:`~sparekit.probes.detect.request_shots`)."""
        for target in (t for t in TARGETS if "error" not in result[t]):
            site = Site(result[target]["best_layer"], result["component"])
            fit_probe(train, target, site, self.seeds[0], lm.info.model_hash, PROBE_PARAMS).save(probes_dir / target)
        demos = sample_demos(data_a, "", self.k_shot, "org_org", random.Random(f"{PROMPT_SEED}:detect"))
        atomic_write_json(probes_dir / "detect.json", {"model": self.model, "model_hash": lm.info.model_hash,
                                                       "demos": demos})
        return probes_dir

    def _run(self, lm: LoadedModel, data_a: ConflictDataset, data_b: ConflictDataset | None, layer_list: list[int],
             comps: list[str], run_dir: Path, progress: bool) -> dict:
        seeds = list(self.seeds)
        seed_everything(seeds[0])
        sites = {c: [Site(layer, c) for layer in layer_list] for c in comps}
        all_sites = [s for group in sites.values() for s in group]
        train = self._collect(lm, data_a, all_sites, run_dir / "data-train", progress)
        test = data_b and self._collect(lm, data_b, all_sites, run_dir / "data-eval", progress)
        n_formats = len(self.prompt_format)  # the same items asked in every format

        main = comps[0]
        by_component, per_fold = self._held_out_tables(train, sites, comps, seeds)
        result = {"model": lm.info.name, "model_hash": lm.info.model_hash, "dataset": data_a.name,
                  "n_items": len(train.items) // n_formats, "counts": train.counts(), "layers": layer_list,
                  "component": main, "split_by": self.split_by, "prompt_formats": list(self.prompt_format), **by_component[main]}
        if self.split_by != "group":
            result[f"held_out_{self.split_by}s"] = per_fold
        if len(comps) > 1:
            result["components"] = by_component
        if test:
            result["eval"] = {"dataset": data_b.name, "n_items": len(test.items) // n_formats, "counts": test.counts(),
                              **_tables(sites, comps, lambda t, s: transfer(train, test, t, s, seeds))[main]}
        if "resid" in sites and "error" not in result["source"]:
            labels = [int(b == "context") for b in train.behaviour if b in ("context", "memory")]
            per_layer = [compare_behaviours(train.target("source", s)[0], labels) for s in sites["resid"]]
            result["stats"] = {name: {k: [row[name][k] for row in per_layer] for k in per_layer[0][name]}
                               for name in per_layer[0]}
        probes_dir = self._save_probes(lm, train, data_a, result, run_dir / "probes")
        plot = plot_layer_metrics(result, run_dir / "probe_metrics.png",
                                  f"{lm.info.name}: linear probes on the {main} stream, {data_a.name} "
                                  f"({result['n_items']} memorised items, {len(seeds)} seeds)")
        result.update(run_dir=str(run_dir), plot=str(plot), probes=str(probes_dir))
        if len(comps) > 1:
            result["components_plot"] = str(plot_components(
                result, run_dir / "probe_components.png",
                f"{lm.info.name}: probe accuracy by component, {data_a.name} ({result['n_items']} memorised items)"))
        atomic_write_json(run_dir / "results.json", result)
        return result
