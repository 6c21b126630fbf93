"""How much of the needle a press keeps: the share of the needle sentence's positions kept, per method.

Why a method loses a RULER task: for each item, the uncompressed prompt pass of the context,
then each press's kept positions (``Press.scores`` → ``select_positions``, as ``KVCompressor`` prunes)
in every compressed layer and KV head; reported is the mean share of the needle sentence's tokens
kept (and of its answer's tokens: the number, or the passkey), against the share of all positions kept.

    python benchmarks/kv_needle_kept.py --model smollm2-135m --tasks passkey,niah_single --items 5 --ratio 0.5
"""

from __future__ import annotations

import argparse

import torch

from sparekit.evaluation.generation import tokenize
from sparekit.kv import keep_counts, make_press, select_positions
from sparekit.kv.bench import prefill
from sparekit.kv.ruler import ruler_items
from sparekit.models import load_model

from bench_kv_ruler import _passages  # the benchmark scripts' folder is on sys.path when run


def _span(lm, context: str, text: str) -> torch.Tensor:
    """Token positions (in the tokenized context) that overlap ``text``'s first occurrence."""
    start = context.index(text)
    offsets = lm.tokenizer(context, return_offsets_mapping=True)["offset_mapping"]
    return torch.tensor([i for i, (a, b) in enumerate(offsets) if a < start + len(text) and b > start and b > a])


def kept_shares(lm, item, methods: list[str], ratio: float) -> dict[str, tuple[float, float]]:
    """Per method: mean share of the needle's and of the answer's positions kept over compressed (layer, head)s."""
    enc = tokenize(lm, [item.context])
    presses = {m: make_press(m, ratio=ratio) for m in methods}
    pre = prefill(lm, enc, presses.values())
    needle = next(s for s in item.context.split(". ") if item.answers[0] in s)
    where = {"needle": _span(lm, item.context, needle), "answer": _span(lm, item.context, item.answers[0])}
    out = {}
    for method, press in presses.items():
        shares: dict[str, list[float]] = {"needle": [], "answer": []}
        for layer, cache_layer in enumerate(pre.cache.layers):
            if layer in press.skip_layers or cache_layer.is_sliding:
                continue
            mask = enc["attention_mask"].bool()
            keep = keep_counts(mask.sum(-1), ratio, press.min_length, press.keep_last)
            index, _ = select_positions(press.scores(cache_layer.keys, mask, pre.observed.get(layer)), mask, keep,
                                        press.keep_last)
            for part, positions in where.items():
                shares[part] += [float(torch.isin(positions, head).float().mean()) for head in index[0]]
        out[method] = tuple(sum(v) / len(v) for v in shares.values())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="passkey,niah_single")
    parser.add_argument("--methods", default="l2,l2-inverse,random,recent,snapkv")
    parser.add_argument("--items", type=int, default=5)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lm = load_model(args.model, device="cpu")
    methods = args.methods.split(",")
    print(f"{lm.info.name}, {args.length} tokens, ratio {args.ratio} (all positions kept: {1 - args.ratio:.2f})")
    print("| task | method | needle sentence kept | answer tokens kept |\n|---|---|---|---|")
    for task in args.tasks.split(","):
        items = ruler_items(lm.tokenizer, task, args.length, args.items, 0, _passages())
        per_item = [kept_shares(lm, item, methods, args.ratio) for item in items]
        for method in methods:
            needle = sum(s[method][0] for s in per_item) / len(per_item)
            answer = sum(s[method][1] for s in per_item) / len(per_item)
            print(f"| {task} | {method} | {needle:.2f} | {answer:.2f} |")


if __name__ == "__main__":
    main()
