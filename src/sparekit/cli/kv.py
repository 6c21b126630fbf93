"""``sparekit kv``: KV-cache compression benchmarks (long-context retrieval, perplexity, knowledge conflicts)."""

from __future__ import annotations

import click

from sparekit.cli.common import emit, json_option, no_verify_option
from sparekit.cli.config import config_options
from sparekit.kv.experiment import KVBenchExperiment, KVConflictExperiment


@click.group()
def kv() -> None:
    """KV-cache compression by key L2 norm, against random, highest-norm and recent-window controls."""


@kv.command("bench")
@config_options(KVBenchExperiment)
@no_verify_option
@json_option
def bench(config: KVBenchExperiment, as_json: bool) -> None:
    """Passkey and needle accuracy and perplexity vs compression ratio, every method side by side.

    \b
    Example:
      sparekit kv bench --lengths 512,1024 --items 4
    """
    summary = config.run()
    emit(summary, as_json, lambda s: f"{s['table']}\nlargest L2 ratio within 1 point: "
                                     f"{s['largest_ratio_within_1_point']}\nplot: {s['plot']}\nrun directory: "
                                     f"{s['run_dir']}")


def render_conflict(s: dict) -> str:
    """One line per (method, ratio): context / memory / other shares and the KV held."""
    lines = [f"{s['items']} conflict items, prompts {s['prompt_tokens']['min']}-{s['prompt_tokens']['max']} tokens, "
             f"compressed: {s['compressed']}",
             "method       ratio  context  memory  other  KV held"]
    for method, curve in s["results"].items():
        for ratio, row in curve.items():
            lines.append(f"{method:<12} {ratio:>5}  {100 * row['context']:6.1f}  {100 * row['memory']:6.1f}  "
                         f"{100 * row['other']:5.1f}  {row.get('kv_ratio', 1):.2f}")
    return "\n".join(lines)


@kv.command("conflict")
@config_options(KVConflictExperiment)
@no_verify_option
@json_option
def conflict(config: KVConflictExperiment, as_json: bool) -> None:
    """Knowledge-source shares (context / memory / other) of conflicting-context answers vs compression ratio.

    The prompt pass holds the demonstrations and the passage; only the passage is compressed
    (the demonstrations are kept, unless --compress-demonstrations), and the question is read
    through the compressed cache. Every passage is compressed, however short (no minimum length).
    """
    emit(config.run(), as_json, render_conflict)
