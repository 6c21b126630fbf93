"""Probe transfer on the broad corpus: leave one relation / kind out, the breadth curve, the OOD flag.

Uses the capped items and cached features of benchmarks/bench_detectors.py (run it first; at most
``--per-relation`` memorised items per relation, so no relation dominates).

- Transfer tables: conflict and source probes per layer, leave-one-relation-out over every relation and
  leave-one-kind-out over every kind (:func:`sparekit.probes.experiment.leave_one_out`, ``--seeds``),
  mean / worst fold / spread, beside the in-distribution table (30 % of the question groups held out).
- Breadth: the conflict probe's held-out accuracy / AUROC against the number of training relations
  (:func:`sparekit.probes.experiment.breadth_curve`: per size, ``--draws`` draws of a held-out relation
  and of the training relations), at the layer best in distribution; plot + numbers.
- OOD flag: a conflict probe fitted on 70 % of the question groups (seed 0), its flag rate and accuracy on
  the other 30 % (three-shot blocks, as fitted) and on the same test items in formats it never saw, built
  by hand: the zero-shot block, ``Passage: … Question: … Answer:``, the passage variant of the corpus
  (3-5 sentences around the fact, three-shot) and the model's chat template.

    python benchmarks/probe_transfer.py --run runs/broad-probe --out runs/probe-transfer
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import sparekit
from sparekit.activations.last_token import last_token_states
from sparekit.data import ConflictDataset, load_dataset, split_by_group
from sparekit.data.prompts import format_block
from sparekit.evaluation.harness import condition_prompts
from sparekit.hooks import Site
from sparekit.probes.experiment import (PROBE_PARAMS, PROMPT_SEED, TEST_FRACTION, breadth_curve,
                                        cross_validate, leave_one_out)
from sparekit.probes.linear import LinearProbe
from sparekit.probes.plots import plot_breadth
from sparekit.utils.io import atomic_write_json

from bench_detectors import capped_probing_data, capped_run_parser  # noqa: E402  (benchmarks/, beside this script)

K_SHOT = 3


def formats(lm, data: ConflictDataset, passages: ConflictDataset,
            items: ConflictDataset) -> dict[str, dict[str, list[str]]]:
    """Per prompt format, the org and sub prompts of ``items`` (the first is the format the probe was fitted on)."""
    by_id = {ex.id: ex for ex in passages}
    shots = {c: condition_prompts(data, c, PROMPT_SEED, K_SHOT) for c in ("org", "sub")}
    passage_shots = {c: condition_prompts(passages, c, PROMPT_SEED, K_SHOT) for c in ("org", "sub")}

    def chat(question: str, context: str) -> str:
        message = [{"role": "user", "content": f"{context}\nAnswer in a few words: {question}"}]
        return lm.tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=True)

    out: dict[str, dict[str, list[str]]] = {"three-shot blocks (fitted)": {}, "zero-shot block": {},
                                            "Passage:/Question:/Answer:": {}, "passage variant, three-shot": {},
                                            "chat template": {}}
    for c in ("org", "sub"):
        contexts = [getattr(ex, f"{c}_context") for ex in items]
        out["three-shot blocks (fitted)"][c] = [shots[c][ex.id] for ex in items]
        out["zero-shot block"][c] = [format_block(ex.question, ctx) for ex, ctx in zip(items, contexts)]
        out["Passage:/Question:/Answer:"][c] = [f"Passage: {ctx}\nQuestion: {ex.question}\nAnswer:"
                                                for ex, ctx in zip(items, contexts)]
        out["passage variant, three-shot"][c] = [passage_shots[c][ex.id] for ex in items if ex.id in by_id]
        if lm.tokenizer.chat_template:
            out["chat template"][c] = [chat(ex.question, ctx) for ex, ctx in zip(items, contexts)]
    return {name: prompts for name, prompts in out.items() if prompts}


def ood(lm, train, data: ConflictDataset, site: Site, n_items: int) -> dict:
    """Flag rate, accuracy and AUROC of a probe fitted on 70 % of the groups, per prompt format."""
    from sklearn.metrics import roc_auc_score

    fit_items, test_items = split_by_group(train.items, [0.7, 0.3], seed=0)
    fit_ids = {ex.id for ex in fit_items}
    X, y, row_ids = train.target("conflict", site)
    keep = np.array([i in fit_ids for i in row_ids])
    probe = LinearProbe(seed=0, **PROBE_PARAMS).fit(X[keep], y[keep])
    items = test_items.sample(n_items, seed=0)
    passages = load_dataset("broad-passages", seed=PROMPT_SEED)
    table = {}
    for name, prompts in formats(lm, data, passages, items).items():
        texts = prompts["org"] + prompts["sub"]
        labels = np.repeat([0, 1], [len(prompts["org"]), len(prompts["sub"])])
        h = torch.cat([last_token_states(lm, texts[i:i + 8], [site])[site] for i in range(0, len(texts), 8)])
        p = probe.predict_proba(h)[:, 1]
        table[name] = {"prompts": len(texts), "flagged": float(np.mean(probe.distance(h) > probe.distance_threshold)),
                       "median_distance": float(np.median(probe.distance(h))),
                       "accuracy": float(np.mean((p > 0.5) == labels)), "auroc": float(roc_auc_score(labels, p))}
        print(name, table[name], flush=True)
    return {"site": str(site), "threshold": probe.distance_threshold, "n_items": len(items), "formats": table}


def transfer_tables(train, target: str, sites: list[Site], seeds: list[int]) -> dict:
    """Per layer: in distribution, leave one relation out, leave one kind out."""
    from sparekit.errors import SparekitError

    tables: dict = {}
    for site in sites:
        row = {"in_distribution": cross_validate(train, target, site, seeds, TEST_FRACTION, PROBE_PARAMS)}
        for field in ("relation", "kind"):
            try:
                row[field] = leave_one_out(train, target, site, seeds, PROBE_PARAMS, field)
            except SparekitError as exc:
                row[field] = {"error": str(exc)}
        tables[str(site)] = row
        print(target, site, {k: v.get("mean", v).get("accuracy", v) for k, v in row.items()}, flush=True)
    return tables


def main() -> None:
    parser = capped_run_parser(__doc__.splitlines()[0], "the `sparekit probe --dataset broad` run "
                                                        "bench_detectors.py read")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sizes", default="1,2,4,8,15")
    parser.add_argument("--draws", type=int, default=12)
    parser.add_argument("--ood-items", type=int, default=16)
    parser.add_argument("--ood-only", type=int, default=None, help="only the OOD table, with a probe at this layer")
    parser.add_argument("--source", action="store_true", help="also the source probe's tables (generates the "
                        "conflict answers: one generation per item)")
    parser.add_argument("--plot", type=Path, default=Path("docs/probes_breadth.png"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lm = sparekit.load_model("default")
    data = load_dataset("broad", seed=PROMPT_SEED)
    sites = [Site(int(layer)) for layer in args.layers.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.ood_only:
        train = capped_probing_data(lm, data, sites, args.run, args.per_relation, answers=False)
        atomic_write_json(args.out / "ood.json", ood(lm, train, data, Site(args.ood_only), args.ood_items))
        return
    train = capped_probing_data(lm, data, sites, args.run, args.per_relation, answers=False)
    tables = {"conflict": transfer_tables(train, "conflict", sites, seeds)}
    site = Site.parse(max(tables["conflict"], key=lambda s: tables["conflict"][s]["in_distribution"]["accuracy"]["mean"]))
    curve = breadth_curve(train, site, [int(k) for k in args.sizes.split(",")], args.draws, probe_params=PROBE_PARAMS)
    result = {"n_items": len(train.items), "tables": tables, "site": str(site), "draws": args.draws, "breadth": curve}
    plot_breadth(curve, args.plot, f"{lm.info.name}: conflict probe ({site}) on a held-out relation of the broad "
                                   f"corpus, {args.draws} draws per point",
                 in_distribution=tables["conflict"][str(site)]["in_distribution"]["accuracy"]["mean"])
    atomic_write_json(args.out / "probe_transfer.json", result)
    result["ood"] = ood(lm, train, data, site, args.ood_items)
    atomic_write_json(args.out / "probe_transfer.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "tables"}, indent=1))
    if not args.source:
        return
    with_answers = capped_probing_data(lm, data, sites, args.run, args.per_relation, answers=True)  # source labels
    result.update(counts=with_answers.counts(), tables={**tables, "source": transfer_tables(with_answers, "source",
                                                                                          sites, seeds)})
    atomic_write_json(args.out / "probe_transfer.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "tables"}, indent=1))


if __name__ == "__main__":
    main()
