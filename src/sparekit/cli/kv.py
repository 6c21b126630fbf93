"""``sparekit kv``: KV-cache compression benchmarks (long-context retrieval, perplexity, knowledge conflicts)."""

from __future__ import annotations

from pathlib import Path

import click

from sparekit.cli.common import device_option, emit, json_option, model_option, parse_list

#: Shortest ``kv bench`` prompt: room for the passkey or needle question and a haystack around it.
MIN_BENCH_LENGTH = 64


def _config(tasks, lengths, ratios, methods, items, skip_layers, keep_last, min_length, seed, batch_size):
    from sparekit.errors import SparekitError
    from sparekit.utils.registry import unknown_name
    from sparekit.kv import METHODS
    from sparekit.kv.bench import TASKS, KVBenchConfig

    config = KVBenchConfig(tasks=parse_list(tasks, str, "--tasks"), lengths=parse_list(lengths, int, "--lengths"),
                           ratios=parse_list(ratios, float, "--ratios"), methods=parse_list(methods, str, "--methods"),
                           items=items, skip_layers=parse_list(skip_layers, int, "--skip-layers"), keep_last=keep_last,
                           min_length=min_length, seed=seed, batch_size=batch_size)
    for task in config.tasks:
        if task not in TASKS:
            raise unknown_name("task", task, TASKS)
    for method in config.methods:
        if method not in METHODS:
            raise unknown_name("KV compression method", method, METHODS)
    for ratio in config.ratios:
        if not 0 <= ratio < 1:
            raise SparekitError(f"KV compression ratio must be in [0, 1), got {ratio}")
    return config


def _check_lengths(config) -> None:
    """A prompt shorter than --min-length is never compressed, and one shorter than MIN_BENCH_LENGTH has no
    haystack: every ratio would score the same, which reads as a result."""
    from sparekit.errors import SparekitError

    shortest = max(config.min_length, MIN_BENCH_LENGTH)
    short = [n for n in config.lengths if n < shortest]
    if short:
        raise SparekitError(f"--lengths {','.join(map(str, short))}: below {shortest} tokens nothing is compressed "
                            f"(--min-length {config.min_length}) or hidden", f"give lengths >= {shortest}")


def _options(fn):
    from sparekit.kv import METHODS

    for option in reversed([
        model_option,
        click.option("--ratios", default="0,0.25,0.5,0.75,0.9", show_default=True,
                     help="Shares of each prompt's KV pairs evicted (ratio 0 is the shared baseline)."),
        click.option("--methods", default=",".join(METHODS), show_default=True,
                     help="l2 (keep lowest key norms), l2-inverse, random, recent."),
        click.option("--skip-layers", default="0,1", show_default=True, help="Layers left uncompressed."),
        click.option("--keep-last", default=8, show_default=True, type=click.IntRange(0),
                     help="Last prompt positions always kept."),
        click.option("--seed", default=0, show_default=True),
        click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1)),
        click.option("--out", type=click.Path(file_okay=False), default=None, help="Run directory; rerun to resume."),
        device_option,
        json_option,
    ]):
        fn = option(fn)
    return fn


@click.group()
def kv() -> None:
    """KV-cache compression by key L2 norm, against random, highest-norm and recent-window controls."""


@kv.command("bench")
@_options
@click.option("--tasks", default="passkey,needle,perplexity", show_default=True)
@click.option("--lengths", default="512,1024", show_default=True, help="Prompt lengths in tokens.")
@click.option("--items", default=4, show_default=True, type=click.IntRange(1),
              help="Prompts (or perplexity windows) per task and length.")
@click.option("--min-length", default=128, show_default=True, type=click.IntRange(0),
              help="Prompts shorter than this are not compressed.")
def bench(model, ratios, methods, skip_layers, keep_last, seed, batch_size, out, device, as_json, tasks, lengths,
          items, min_length):
    """Passkey and needle accuracy and perplexity vs compression ratio, every method side by side.

    \b
    Example:
      sparekit kv bench --lengths 512,1024 --items 4
    """
    from sparekit.data.loaders import NQSWAP_LOCAL
    from sparekit.errors import SparekitError
    from sparekit.kv.bench import markdown_tables, plot_bench, run_bench
    from sparekit.models import load_model
    from sparekit.sae.corpus import nqswap_passages
    from sparekit.utils.io import atomic_write_json, atomic_write_text

    config = _config(tasks, lengths, ratios, methods, items, skip_layers, keep_last, min_length, seed, batch_size)
    _check_lengths(config)
    passages: list[str] = []
    if {"needle", "perplexity"} & set(config.tasks):
        if not NQSWAP_LOCAL.is_file():
            raise SparekitError(f"the Wikipedia passages (NQ-Swap contexts) are missing at {NQSWAP_LOCAL}",
                                "run only --tasks passkey, or place the shared data beside the repository")
        passages = nqswap_passages(NQSWAP_LOCAL)[1]
    lm = load_model(model, device=device)
    for layer in config.skip_layers:
        lm.info.check_layer(layer)
    out_dir = Path(out or f"runs/kv-bench-{lm.info.model_hash[:8]}")
    summary = run_bench(lm, config, out_dir, passages)
    summary["plot"] = str(plot_bench(summary, out_dir / "kv_bench.png"))
    atomic_write_json(out_dir / "results.json", summary)
    atomic_write_text(out_dir / "results.md", markdown_tables(summary) + "\n")
    summary["run_dir"] = str(out_dir)
    emit(summary, as_json, lambda s: f"{markdown_tables(s)}\nlargest L2 ratio within 1 point: "
                                     f"{s['largest_ratio_within_1_point']}\nplot: {s['plot']}\nrun directory: {out_dir}")


@kv.command("conflict")
@_options
@click.option("--dataset", "-d", default="default", show_default=True, help="default, nqswap, or a JSONL path.")
@click.option("--limit", default=48, show_default=True, type=click.IntRange(1), help="Conflict items (seeded sample).")
@click.option("--k-shot", default=3, show_default=True, type=click.IntRange(0))
def conflict(model, ratios, methods, skip_layers, keep_last, seed, batch_size, out, device, as_json, dataset, limit,
             k_shot):
    """Knowledge-source shares (context / memory / other) of conflicting-context answers vs compression ratio.

    Prompts are short, so every prompt is compressed (no minimum length).
    """
    import random

    from sparekit.data import load_dataset
    from sparekit.evaluation.harness import condition_prompts
    from sparekit.kv.bench import conflict_shares
    from sparekit.models import load_model
    from sparekit.utils.io import atomic_write_json

    config = _config("passkey", "0", ratios, methods, limit, skip_layers, keep_last, 0, seed, batch_size)
    data = load_dataset(dataset)
    rows = sorted(random.Random(seed).sample(range(len(data)), min(limit, len(data))))
    examples = [data[i] for i in rows]
    by_id = condition_prompts(data, "sub", seed=42, k_shot=k_shot)
    prompts = [by_id[ex.id] for ex in examples]
    lm = load_model(model, device=device)
    for layer in config.skip_layers:
        lm.info.check_layer(layer)
    result = conflict_shares(lm, prompts, examples, config)
    lengths = [len(lm.tokenizer(p)["input_ids"]) for p in prompts]
    summary = {"model": lm.info.name, "dataset": data.name, "items": len(prompts), "k_shot": k_shot,
               "prompt_tokens": {"min": min(lengths), "mean": sum(lengths) / len(lengths), "max": max(lengths)},
               "results": result}
    out_dir = Path(out or f"runs/kv-conflict-{data.name}-{lm.info.model_hash[:8]}")
    atomic_write_json(out_dir / "results.json", summary)

    def render(s: dict) -> str:
        lines = [f"{s['items']} conflict items, prompts {s['prompt_tokens']['min']}-{s['prompt_tokens']['max']} tokens",
                 "method       ratio  context  memory  other  KV held"]
        for method, curve in s["results"].items():
            for ratio, row in curve.items():
                lines.append(f"{method:<12} {ratio:>5}  {100 * row['context']:6.1f}  {100 * row['memory']:6.1f}  "
                             f"{100 * row['other']:5.1f}  {row.get('kv_ratio', 1):.2f}")
        return "\n".join(lines)

    emit(summary, as_json, render)
