"""Prompt format as a dimension of the broad corpus' probes (issue 29 item 2): capture, then the tables.

The same capped items (at most ``--per-relation`` memorised items per relation, as
benchmarks/bench_detectors.py keeps them) are asked in every prompt format the model has
(:data:`sparekit.data.formats.FORMATS`; ``chat`` only with a chat template), their org and sub
prompts built by the format registry (:func:`~sparekit.probes.experiment.collect`, ``fmt``): three
per-item ``org_org`` demonstrations for ``three_shot``, none for the others (as
:class:`~sparekit.data.formats.PromptBuilder` builds them at request time). Features are cached per
format under ``run/capped-N`` (three_shot: the folder bench_detectors.py fills) and
``run/capped-N-<format>``; a rerun resumes.

Then the conflict probe's tables (``--seeds``; mean / worst fold / spread over folds), all at the first of
``--layers``, ``--more-tables`` at the others:

- ``in_distribution``: fitted across all formats, 30 % of the question groups held out (every format of a
  held-out item is held out); ``three_shot_in_distribution``: the same, three_shot rows only;
- ``format``: leave one format out (fit on the other formats, score the held-out one), against
  ``three_shot_to``: the probe fitted on three_shot alone, scored on each other format;
- ``relation`` / ``kind``: leave one relation / kind out with all formats in training;
  ``three_shot_relation``: the same, three_shot only (last session's protocol at this n).

The OOD flag (``--ood-layer``): probes fitted on 70 % of the question groups, on three_shot alone, on all
formats, and on all but each format in turn; per format, the flag rate, median distance, accuracy and AUROC
on the other 30 %'s rows. ``--save-probe`` fits the across-formats conflict probe on every row (at the
layer best in distribution) and saves it there, with the shipped probes' ``detect.json``, beside the
shipped probe's reading of each format; ``--default-comparison`` reads both probes on the default dataset's
test split (the steering benchmark's) in each format.

    python benchmarks/probe_formats.py --run runs/broad-probe --out runs/probe-formats --capture-only
    python benchmarks/probe_formats.py --run runs/broad-probe --out runs/probe-formats \
      --save-probe runs/probe-formats/across-formats --default-comparison
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

import sparekit
from sparekit.data import ConflictDataset, load_dataset, split_by_group
from sparekit.data.dataset import held_out_values
from sparekit.data.formats import DEFAULT_FORMAT, FORMATS, prompt_format
from sparekit.evaluation.harness import memorised_subset
from sparekit.errors import SparekitError
from sparekit.hooks import Site
from sparekit.probes.detect import load_probes, resolve_probe_dir
from sparekit.probes.experiment import (PROBE_PARAMS, PROMPT_SEED, TEST_FRACTION, ProbingData, collect,
                                        cross_validate, fit_probe, leave_one_out, stack_formats, transfer)
from sparekit.probes.linear import LinearProbe
from sparekit.steering.bench.data import benchmark_splits
from sparekit.steering.bench.protocol import BenchConfig
from sparekit.utils.io import atomic_write_json

from bench_detectors import capped_items, capped_probing_data, capped_run_parser  # benchmarks/, beside this script


def model_formats(lm) -> list[str]:
    """The registered formats this model can be prompted in (``chat`` needs a chat template)."""
    return [name for name in FORMATS if name != "chat" or getattr(lm.tokenizer, "chat_template", None)]


def capture(lm, data: ConflictDataset, items: ConflictDataset, sites: list[Site], run: Path, per_relation: int,
            names: list[str], batch_size: int) -> dict[str, ProbingData]:
    """Per format, the conflict features of ``items``' org and sub prompts (no answers: conflict target only)."""
    found = {}
    for name in names:
        start = time.perf_counter()
        found[name] = capped_probing_data(lm, data, sites, run, per_relation, False, name, items, batch_size)
        print(f"{name}: {2 * len(items)} prompts in {time.perf_counter() - start:.0f} s", flush=True)
    return found


def _summary(table: dict) -> dict:
    """accuracy / AUROC: mean, and for leave-one-out tables the worst fold and the spread."""
    keys = ("mean", "std", "worst")
    return {m: {k: round(table[m][k], 3) for k in keys if k in table[m]} for m in ("accuracy", "auroc")}


#: the tables of one layer, in the order they are computed (the most wanted first: a job cut short keeps them)
TABLES = ("format", "three_shot_to", "in_distribution", "relation", "kind", "three_shot_in_distribution",
          "three_shot_relation")


def site_table(name: str, per_format: dict[str, ProbingData], stacked: ProbingData, site: Site,
               seeds: list[int]) -> dict:
    """One of the conflict probe's :data:`TABLES` at one layer (module docstring)."""
    three = per_format[DEFAULT_FORMAT]
    start = time.perf_counter()
    if name == "three_shot_to":
        table = {n: transfer(three, data, "conflict", site, seeds, PROBE_PARAMS)
                 for n, data in per_format.items() if n != DEFAULT_FORMAT}
    elif name.endswith("in_distribution"):
        data = three if name.startswith("three_shot") else stacked
        table = cross_validate(data, "conflict", site, seeds, TEST_FRACTION, PROBE_PARAMS)
    else:
        data, field = (three, "relation") if name == "three_shot_relation" else (stacked, name)
        table = leave_one_out(data, "conflict", site, seeds, PROBE_PARAMS, field)
    shown = {n: _summary(t) for n, t in table.items()} if name == "three_shot_to" else _summary(table.get("mean", table))
    print(site, name, f"{time.perf_counter() - start:.0f} s", json.dumps(shown), flush=True)
    return table


def _reading(probe: LinearProbe, data: ProbingData, site: Site, rows: list[int]) -> dict:
    """Flag rate, median distance, accuracy and AUROC of ``probe`` on the org and sub prompts of ``rows``."""
    from sklearn.metrics import roc_auc_score  # not needed for the capture

    X = np.concatenate([data.org[site][rows].numpy(), data.sub[site][rows].numpy()])
    y = np.repeat([0, 1], len(rows))
    p, distance = probe.predict_proba(X)[:, 1], probe.distance(X)
    out = {"prompts": len(y), "accuracy": round(float(np.mean((p > 0.5) == y)), 3),
           "auroc": round(float(roc_auc_score(y, p)), 3)}
    if distance is not None:  # the shipped probes carry no feature statistics yet
        out.update(flagged=round(float(np.mean(distance > probe.distance_threshold)), 3),
                   median_distance=round(float(np.median(distance)), 3))
    return out


def ood_table(per_format: dict[str, ProbingData], site: Site, seed: int = 0) -> dict:
    """Per fitted set of formats (three_shot alone, all, all but one), its OOD flag and scores on each format's
    held-out question groups (70 / 30 split ``seed``: the same items in every format). The row "all but f"
    read on f is leave-one-format-out with the test items unseen in any format."""
    items = next(iter(per_format.values())).items
    fit_items, _ = split_by_group(items, [1 - TEST_FRACTION, TEST_FRACTION], seed=seed)
    fit_ids = {ex.id for ex in fit_items}
    fit_rows = [i for i, ex in enumerate(items) if ex.id in fit_ids]
    test_rows = [i for i, ex in enumerate(items) if ex.id not in fit_ids]
    names = list(per_format)
    fitted_on = {DEFAULT_FORMAT: [DEFAULT_FORMAT], "all": names,
                 **{f"all but {n}": [m for m in names if m != n] for n in names}}
    table = {}
    for label, formats in fitted_on.items():
        part = stack_formats({n: _rows(per_format[n], fit_rows) for n in formats})
        X, y, _ = part.target("conflict", site)
        probe = LinearProbe(seed=seed, **PROBE_PARAMS).fit(X, y)
        table[label] = {n: _reading(probe, per_format[n], site, test_rows) for n in names}
        print("ood", label, {n: (r["flagged"], r["accuracy"]) for n, r in table[label].items()}, flush=True)
    return {"site": str(site), "fit_items": len(fit_rows), "test_items": len(test_rows), "fitted_on": table}


def _rows(data: ProbingData, rows: list[int]) -> ProbingData:
    """The conflict features of ``rows`` only."""
    return ProbingData(data.items.subset(rows), {s: t[rows] for s, t in data.org.items()},
                       {s: t[rows] for s, t in data.sub.items()}, [])


def save_probe(lm, per_format: dict[str, ProbingData], stacked: ProbingData, site: Site, folder: Path) -> dict:
    """The across-formats conflict probe fitted on every row at ``site``, saved in ``folder`` with the shipped
    probes' detect.json (request-time demonstrations unchanged); beside it, the shipped probe's and this
    probe's in-sample reading of each format (the held-out comparison is in the tables)."""
    shipped_dir = resolve_probe_dir(None)
    probe = fit_probe(stacked, "conflict", site, 0, lm.info.model_hash, PROBE_PARAMS)
    probe.save(folder / "conflict")
    shutil.copyfile(shipped_dir / "detect.json", folder / "detect.json")
    shipped = load_probes(shipped_dir, lm.info.model_hash).probes["conflict"]
    if shipped.site not in {str(s) for s in next(iter(per_format.values())).org}:
        raise SparekitError(f"the shipped probe reads {shipped.site}, which was not captured", "add its layer")
    items = next(iter(per_format.values())).items
    default_relations = set(held_out_values(load_dataset("default"), "relation"))
    parts = {"all": list(range(len(items))),
             "outside default's relations": [i for i, ex in enumerate(items) if ex.relation not in default_relations]}
    at = Site.parse(shipped.site)
    return {"site": str(site), "folder": str(folder), "shipped_site": shipped.site,
            "shipped": {part: {n: _reading(shipped, d, at, rows) for n, d in per_format.items()}
                        for part, rows in parts.items()}}


def default_comparison(lm, folder: Path, cache: Path, names: list[str]) -> dict:
    """The shipped conflict probe and the one in ``folder`` on the default dataset's test split (the steering
    benchmark's: memorised items, :func:`benchmark_splits` with the default protocol), its prompts in each of
    ``names``. The shipped probe was fitted on every memorised default row, so for it these rows are seen."""
    data = load_dataset("default", seed=PROMPT_SEED)
    memorised = memorised_subset(lm, data, seed=PROMPT_SEED, k_shot=3, cache_dir=cache / "closed-book")
    test = benchmark_splits(memorised, data, BenchConfig())[2]
    probes = {"shipped": load_probes(resolve_probe_dir(None), lm.info.model_hash).probes["conflict"],
              "across formats": load_probes(folder, lm.info.model_hash).probes["conflict"]}
    sites = sorted({Site.parse(p.site) for p in probes.values()}, key=lambda s: s.layer)
    out: dict = {"test_items": len(test)}
    for name in names:
        features = collect(lm, data, sites, cache / name, k_shot=3, prompt_seed=PROMPT_SEED, answers=False,
                           items=test, fmt=prompt_format(name, lm.tokenizer))
        out[name] = {label: _reading(p, features, Site.parse(p.site), list(range(len(test))))
                     for label, p in probes.items()}
        print("default test split", name, out[name], flush=True)
    return out


def main() -> None:
    parser = capped_run_parser(__doc__.splitlines()[0], "a `sparekit probe --dataset broad` run directory (its "
                                                        "closed-book cache says which rows are memorised)")
    parser.add_argument("--formats", default=None, help="comma-separated (default: every format the model has)")
    parser.add_argument("--limit-items", type=int, default=None, help="only the first N capped items (timing)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--capture-only", action="store_true")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ood-layer", type=int, default=13)
    parser.add_argument("--default-comparison", action="store_true",
                        help="also read the shipped and the --save-probe probe on the default dataset's test split")
    parser.add_argument("--more-tables", default="format,three_shot_to,in_distribution",
                        help="the tables of the layers after the first (all of TABLES for the first)")
    parser.add_argument("--save-probe", type=Path, default=None,
                        help="fit the across-formats conflict probe on every row and save it in this folder")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lm = sparekit.load_model("default")
    data = load_dataset("broad", seed=PROMPT_SEED)
    sites = [Site(int(layer)) for layer in args.layers.split(",")]
    names = args.formats.split(",") if args.formats else model_formats(lm)
    items = capped_items(lm, data, args.run, args.per_relation)
    if args.limit_items:
        items = items.subset(range(args.limit_items))
    per_format = capture(lm, data, items, sites, args.run, args.per_relation, names, args.batch_size)
    if args.capture_only:
        return
    stacked = stack_formats(per_format)
    path = args.out / "probe_formats.json"
    result = json.loads(path.read_text()) if path.is_file() else {}  # a rerun resumes, layer by layer
    result.update(n_items=len(items), formats=names, per_relation=args.per_relation)
    seeds = [int(s) for s in args.seeds.split(",")]
    for site in sites:  # every table of the first layer, --more-tables of the others; the OOD table early
        for name in TABLES if site == sites[0] else args.more_tables.split(","):
            done = result.setdefault("tables", {}).setdefault(str(site), {})
            if name not in done:
                done[name] = site_table(name, per_format, stacked, site, seeds)
                atomic_write_json(path, result)
            if name == "in_distribution" and "ood" not in result:
                result["ood"] = ood_table(per_format, Site(args.ood_layer))
                atomic_write_json(path, result)
    for seed in seeds[1:]:  # the OOD table's other split seeds, after every layer's tables
        if str(seed) not in result.setdefault("ood_more_seeds", {}):
            result["ood_more_seeds"][str(seed)] = ood_table(per_format, Site(args.ood_layer), seed)
            atomic_write_json(path, result)
    if args.save_probe is not None:
        best = max((s for s in sites if "in_distribution" in result["tables"].get(str(s), {})),
                   key=lambda s: result["tables"][str(s)]["in_distribution"]["accuracy"]["mean"])
        result["probe"] = save_probe(lm, per_format, stacked, best, args.save_probe)
        atomic_write_json(path, result)
    if args.default_comparison and args.save_probe is not None:
        result["default_test_split"] = default_comparison(lm, args.save_probe, args.out / "default", names)
        atomic_write_json(path, result)


if __name__ == "__main__":
    main()
