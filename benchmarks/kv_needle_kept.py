"""How much of the needle a press keeps, per item, compressed layer and KV head, joined with the item's score.

Why a method loses a RULER task: for each item, the uncompressed prompt pass of the context, then each press's
kept positions (``Press.scores`` → ``select_positions``, as ``KVCompressor`` prunes) in every compressed layer
and KV head: the share of the needle sentence's tokens kept, of its answer's tokens (every occurrence: the
passkey is written twice), and what the kept positions are (the first 4 — the attention sinks —, the needle,
the haystack, the protected last ones) and where (the share of each fifth of the context kept). With
``--decode needle`` each L2 cell also answers the question through its compressed cache (as ``bench_kv_ruler``
does) twice: under L2, and under L2 made to keep the needle's positions (in place of the highest-norm kept
ones, same budget): does the answer come back when L2 keeps the needle? ``--decode thirds`` adds the needle
kept in one third of the compressed layers only (which layers lose it), and the answer's tokens alone kept.
One JSON line per item × (method, ratio) in ``--out`` (``--resume`` skips the lines there). With ``--records``
(``bench_kv_ruler.py``'s record files) each item is joined with its score in the same cell, once the records
are checked to score this very item (same key and depth, and the item's answers rescore every recorded output
to its recorded score), and the shares are reported by hit / miss and by depth::

    python benchmarks/kv_needle_kept.py --tasks passkey,niah_single --items 10 --out runs/kv-ruler/kept-0.5.jsonl
    python benchmarks/kv_needle_kept.py --tasks passkey --methods l2 --ratios 0.5,0.75,0.9 --lengths 1024,2048,4096 \
        --items 50 --records runs/kv-ruler/smol-ruler-{1k-all,2k,4k}.jsonl --out runs/kv-ruler/passkey-kept.jsonl
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparekit.errors import SparekitError
from sparekit.evaluation.generation import tokenize
from sparekit.kv import keep_counts, make_press, select_positions
from sparekit.kv.bench import Prefill, decode, prefill
from sparekit.kv.presses import L2Press
from sparekit.kv.ruler import RulerItem, ruler_items
from sparekit.kv.sweep import Sink, read_records
from sparekit.models import load_model

from bench_kv_ruler import _floats, _passages  # the benchmark scripts' folder is on sys.path when run

SINKS = 4  # StreamingLLM's attention sinks: the first positions
REGIONS = ("sinks", "needle", "haystack", "last")
FIFTHS = 5


def _span(lm, context: str, text: str) -> torch.Tensor:
    """Token positions (in the tokenized context) that overlap any occurrence of ``text``."""
    offsets = lm.tokenizer(context, return_offsets_mapping=True)["offset_mapping"]
    starts = [i for i in range(len(context)) if context.startswith(text, i)]
    return torch.tensor([i for i, (a, b) in enumerate(offsets)
                         if b > a and any(a < s + len(text) and b > s for s in starts)])


def _needle(item: RulerItem) -> str:
    return next(s for s in item.context.split(". ") if item.answers[0] in s)


def regions(n: int, needle: torch.Tensor, keep_last: int) -> torch.Tensor:
    """Each position's index in :data:`REGIONS` (a protected last position counts as ``last``)."""
    label = torch.full((n,), REGIONS.index("haystack"))
    label[needle] = REGIONS.index("needle")
    label[:SINKS] = REGIONS.index("sinks")
    label[n - keep_last:] = REGIONS.index("last")
    return label


def head_stats(index: torch.Tensor, parts: dict[str, torch.Tensor], label: torch.Tensor) -> dict:
    """One (layer, head)'s kept positions ``index``: the share of each part kept, what the kept positions
    are (share of them per region) and the share of each fifth of the context kept."""
    n = len(label)
    fifth = torch.arange(n) * FIFTHS // n
    return {**{part: float(torch.isin(positions, index).float().mean()) for part, positions in parts.items()},
            "kept_in": (torch.bincount(label[index], minlength=len(REGIONS)) / len(index)).tolist(),
            "fifths": (torch.bincount(fifth[index], minlength=FIFTHS) / torch.bincount(fifth)).tolist()}


@dataclass(frozen=True)
class NeedleL2Press(L2Press):
    """L2 that keeps the ``forced`` positions first, in place of the highest-norm ones it would keep, in
    ``layers`` (every compressed layer if empty); its ``observed`` is the layer's index (:func:`answers`)."""

    forced: tuple[int, ...] = ()
    layers: tuple[int, ...] = ()

    def scores(self, keys: torch.Tensor, prompt_mask: torch.Tensor, observed: Any) -> torch.Tensor:
        scores = super().scores(keys, prompt_mask, observed)
        if not self.layers or observed in self.layers:
            scores[..., list(self.forced)] = float("-inf")
        return scores


def answers(lm, item: RulerItem, enc: dict, pre: Prefill, press: L2Press, needle: torch.Tensor, answer: torch.Tensor,
            thirds: bool) -> dict:
    """The item's answer and score read through ``press``'s cache, and through it with the needle kept in
    every compressed layer; with ``thirds`` also with the needle kept in one third of the compressed layers
    only, and with the answer's tokens alone kept in every one."""
    options = {f: getattr(press, f) for f in press.options()}
    needle = tuple(needle.tolist())
    variants = {"": press, "needle_kept_": NeedleL2Press(**options, forced=needle)}
    if thirds:
        layers = [layer for layer, cache_layer in enumerate(pre.cache.layers)
                  if layer not in press.skip_layers and not cache_layer.is_sliding]
        variants["answer_kept_"] = NeedleL2Press(**options, forced=tuple(answer.tolist()))
        for third in (tuple(layers[i] for i in band) for band in _bands(layers)):
            variants[f"needle_kept_{third[0]}-{third[-1]}_"] = NeedleL2Press(**options, forced=needle, layers=third)
    indexed = replace(pre, observed={layer: layer for layer in range(len(pre.cache.layers))})
    question = lm.tokenizer(item.question, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = {}
    for name, each in variants.items():
        tokens, _ = decode(lm, enc, indexed, item.steps, each, question=question.to(lm.model.device))
        text = lm.tokenizer.decode(tokens[0], skip_special_tokens=True)
        out |= {f"{name}output": text, f"{name}score": item.score(text)}
    return out


def kept_records(lm, item: RulerItem, cells: Sequence[tuple[str, float]], answer: str | None = None) -> list[dict]:
    """One record per (method, ratio): per compressed layer and KV head, the shares :func:`head_stats` gives
    (with ``answer``, ``needle`` or ``thirds``, an L2 cell's answers too: :func:`answers`)."""
    enc = tokenize(lm, [item.context])
    presses = {cell: make_press(cell[0], ratio=cell[1]) for cell in cells}
    pre = prefill(lm, enc, presses.values())
    mask = enc["attention_mask"].bool()
    n = int(mask.sum())
    parts = {"needle": _span(lm, item.context, _needle(item)), "answer": _span(lm, item.context, item.answers[0])}
    needle = torch.cat(list(parts.values())).unique()
    rows = []
    for (method, ratio), press in presses.items():
        keep = keep_counts(mask.sum(-1), ratio, press.min_length, press.keep_last)
        label = regions(n, needle, press.keep_last)
        layers, stats = [], []
        for layer, cache_layer in enumerate(pre.cache.layers):
            if layer in press.skip_layers or cache_layer.is_sliding:
                continue
            index, _ = select_positions(press.scores(cache_layer.keys, mask, pre.observed.get(layer)), mask, keep,
                                        press.keep_last)
            layers.append(layer)
            stats.append([head_stats(head, parts, label) for head in index[0]])
        rows.append({"model": lm.info.name, "key": item.key, "task": item.task, "length": item.length,
                     "depth": item.depth, "method": method, "ratio": ratio, "positions": n, "kept": int(keep),
                     "layers": layers, **{k: [[h[k] for h in heads] for heads in stats] for k in stats[0][0]},
                     **(answers(lm, item, enc, pre, press, needle, parts["answer"], answer == "thirds")
                        if answer and method == "l2" else {})})
    return rows


def outcomes(items: Iterable[RulerItem], records: Iterable[dict], model: str) -> tuple[dict, list[str]]:
    """Each item's recorded score per ``(key, method, ratio)``, and the keys whose records are another item.

    A key's records match the item when they give its depth and the item's answers rescore every
    recorded output to the recorded score, with at least one hit among them (so the answer itself, not
    only a miss, is checked); a key without records is neither joined nor listed.
    """
    by_key: dict[str, list[dict]] = {}
    for r in records:
        if r.get("suite") == "ruler" and r["model"] == model:
            by_key.setdefault(r["key"], []).append(r)
    scores, unmatched = {}, []
    for item in items:
        got = by_key.get(item.key, [])
        if not got:
            continue
        if all(r["depth"] == item.depth and item.score(r["output"]) == r["score"] for r in got) \
                and any(r["score"] > 0 for r in got):
            scores |= {(item.key, r["method"], r["ratio"]): r["score"] for r in got}
        else:
            unmatched.append(item.key)
    return scores, unmatched


def _bands(layers: list[int]) -> list[np.ndarray]:
    """The compressed layers in thirds (early, middle, late)."""
    return np.array_split(np.arange(len(layers)), 3)


def _row(rows: list[dict], part: str) -> list[str]:
    """Mean share of ``part`` kept, the (layer, head)s keeping none / all of it, and the share per third of layers."""
    shares = np.array([r[part] for r in rows])  # [items, layers, heads]
    thirds = [f"{shares[:, band].mean():.2f}" for band in _bands(rows[0]["layers"])]
    return [f"{shares.mean():.2f}", f"{(shares == 0).mean():.2f}", f"{(shares == 1).mean():.2f}", " / ".join(thirds)]


def shares_table(rows: list[dict], scores: dict, group: Callable[[dict], str], name: str) -> list[str]:
    """Markdown rows per task × length × method × ratio × ``group``: items, hits (where joined), shares kept."""
    layers = rows[0]["layers"]
    thirds = " / ".join(f"{layers[b[0]]}–{layers[b[-1]]}" for b in _bands(layers))
    lines = [f"| task | length | method | ratio | {name} | items | hits | needle kept | answer kept | (layer, head)s "
             f"keeping none of the answer | keeping all of it | answer kept, layers {thirds} |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["task"], r["length"], r["method"], r["ratio"], group(r)), []).append(r)
    for (task, length, method, ratio, value), got in sorted(cells.items()):
        hit = [scores[k] for r in got if (k := (r["key"], method, ratio)) in scores]
        hits = f"{sum(hit):g}/{len(hit)}" if hit else "—"
        needle = np.mean([r["needle"] for r in got])
        lines.append(f"| {task} | {length} | {method} | {ratio:g} | {value} | {len(got)} | {hits} | {needle:.2f} | "
                     + " | ".join(_row(got, "answer")) + " |")
    return lines


def kept_table(rows: list[dict]) -> list[str]:
    """What the kept positions are (share per region) and the share of each fifth of the context kept."""
    lines = ["| task | length | method | ratio | kept / positions | " + " | ".join(f"kept: {r}" for r in REGIONS)
             + " | " + " | ".join(f"fifth {i + 1} kept" for i in range(FIFTHS)) + " |",
             "|---|---|---|---|---|" + "---|" * (len(REGIONS) + FIFTHS)]
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["task"], r["length"], r["method"], r["ratio"]), []).append(r)
    for (task, length, method, ratio), got in sorted(cells.items()):
        kept_in = np.mean([r["kept_in"] for r in got], axis=(0, 1, 2))
        fifths = np.mean([r["fifths"] for r in got], axis=(0, 1, 2))
        share = np.mean([r["kept"] / r["positions"] for r in got])
        lines.append(f"| {task} | {length} | {method} | {ratio:g} | {share:.3f} | "
                     + " | ".join(f"{x:.3f}" for x in [*kept_in, *fifths]) + " |")
    return lines


def answers_table(rows: list[dict], scores: dict) -> list[str]:
    """Hits per depth of the L2 cells answered here (``--decode``): as the records scored them, now, and with
    the needle kept."""
    kinds = list(dict.fromkeys(k for r in rows for k in r if k.endswith("score")))  # in the records' order
    lines = ["| task | length | ratio | depth | items | hits (records) | "
             + " | ".join("hits (now)" if k == "score" else f"hits, {k[:-6].replace('_', ' ')}" for k in kinds) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(kinds)]
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        if "score" in r:
            cells.setdefault((r["task"], r["length"], r["ratio"], f"{r['depth']:g}"), []).append(r)
            cells.setdefault((r["task"], r["length"], r["ratio"], "all"), []).append(r)
    for (task, length, ratio, depth), got in sorted(cells.items()):
        recorded = [scores[k] for r in got if (k := (r["key"], r["method"], ratio)) in scores]
        lines.append(f"| {task} | {length} | {ratio:g} | {depth} | {len(got)} | "
                     + (f"{sum(recorded):g}/{len(recorded)}" if recorded else "—") + " | "
                     + " | ".join(f"{sum(r.get(k, 0) for r in got):g}/{sum(k in r for r in got)}" for k in kinds)
                     + " |")
    return lines


def _outcome(scores: dict) -> Callable[[dict], str]:
    """An item's outcome in its cell: hit (every answer found), miss, or not joined (no matching record)."""
    def outcome(r: dict) -> str:
        score = scores.get((r["key"], r["method"], r["ratio"]))
        return "not joined" if score is None else "hit" if score == 1 else "miss"
    return outcome


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="passkey,niah_single")
    parser.add_argument("--methods", default="l2,l2-inverse,random,recent,snapkv")
    parser.add_argument("--items", type=int, default=5)
    parser.add_argument("--lengths", default="1024")
    parser.add_argument("--ratios", type=_floats, default=(0.5,))
    parser.add_argument("--seed", type=int, default=0, help="the items' seed (bench_kv_ruler's --seed)")
    parser.add_argument("--records", type=Path, nargs="*", default=[], help="bench_kv_ruler.py record files to join")
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file the per-item shares are appended to")
    parser.add_argument("--resume", action="store_true", help="skip the item × cells already in --out")
    parser.add_argument("--decode", choices=("needle", "thirds"), default=None,
                        help="L2 cells also answer, as they are and with the needle kept (thirds: also in each third "
                             "of the compressed layers alone, and with only the answer's tokens kept)")
    run_one_thread(report, parser.parse_args(argv))


def run_one_thread(report: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> None:
    """``report(args)`` on one torch thread (the machine is shared); a SparekitError is a one-line error."""
    torch.set_num_threads(1)
    try:
        report(args)
    except SparekitError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def report(args) -> None:
    """Compute the items missing from ``--out``, then print the tables over every requested item."""
    lm = load_model(args.model, device="cpu")
    cells = [(m, r) for m in args.methods.split(",") for r in args.ratios]
    items = [item for length in map(int, args.lengths.split(",")) for task in args.tasks.split(",")
             for item in ruler_items(lm.tokenizer, task, length, args.items, args.seed, _passages())]
    sink = Sink(args.out, args.resume)
    for item in items:
        if sink.missing(lm.info.name, [item.key], cells):
            sink.write(kept_records(lm, item, cells, args.decode))
    wanted = {(lm.info.name, item.key, *cell) for item in items for cell in cells}
    rows = [r for r in read_records(args.out) if (r["model"], r["key"], r["method"], r["ratio"]) in wanted]
    scores, unmatched = outcomes(items, (r for path in args.records for r in read_records(path)), lm.info.name)
    print(f"{lm.info.name}, seed {args.seed}: {len(rows)} item × cells; "
          f"{len({k for k, *_ in scores})} items joined with the records, {len(unmatched)} not matching them"
          + (f" ({', '.join(unmatched)})" if unmatched else ""))
    print("\n".join(shares_table(rows, scores, _outcome(scores), "outcome")))
    print()
    print("\n".join(shares_table(rows, scores, lambda r: f"{r['depth']:g}", "depth")))
    print()
    print("\n".join(kept_table(rows)))
    if any("score" in r for r in rows):
        print()
        print("\n".join(answers_table(rows, scores)))


if __name__ == "__main__":
    main()
