"""What KV compression costs and saves: KV bytes held, compression ÷ prefill time, decode time per token.

One passkey prompt of about ``--length`` tokens. Each round times the prompt pass (prefill,
logits of the last position only, as ``generate`` does), then decodes ``--new-tokens`` greedy
tokens from a copy of that cache uncompressed and under ``kv_compress`` (L2, default
settings) at each ratio, in interleaved rounds (medians), so the ratios share the machine's
load. Compression is timed where it happens (sparekit's per-layer pruning, right before the
first decoding step reads the cache); decode time per token leaves it out. The goal of
issue 27: compression ≤ 2 % of the prefill time.

    python benchmarks/bench_kv.py [--model default] [--length 4096] [--new-tokens 16] [--ratios 0.5,0.9] [--rounds 3]

Key-norm statistics (is the method's premise true on a model?) are ``benchmarks/kv_norm_stats.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from sparekit.evaluation.generation import tokenize
from sparekit.kv import KVCompressor, L2Press, cache_bytes
from sparekit.kv.bench import PASSKEY_QUESTION, decode, passkey_items, prefill
from sparekit.models import load_model


@contextmanager
def timed_pruning() -> Iterator[list[float]]:
    """Seconds each call of sparekit's per-layer pruning took while open (the one private hook read here)."""
    spent: list[float] = []
    prune = KVCompressor._prune

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return prune(self, *args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    KVCompressor._prune = timed
    try:
        yield spent
    finally:
        KVCompressor._prune = prune


def one_round(lm, enc: dict, ratios: list[float], new_tokens: int) -> dict:
    """Prefill seconds, then per ratio (0: uncompressed): KV bytes held, compression s, decode s per token."""
    start = time.perf_counter()
    pre = prefill(lm, enc, [])
    out = {"prefill_s": time.perf_counter() - start, "uncompressed_bytes": cache_bytes(pre.cache)}
    for ratio in ratios:
        with timed_pruning() as spent:
            _, stats = decode(lm, enc, pre, new_tokens, L2Press(ratio=ratio) if ratio else None)
        out[ratio] = {"kv_bytes": stats["kv_bytes"], "compress_s": sum(spent),
                      "per_token_s": (stats["decode_s"] - sum(spent)) / (new_tokens - 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--length", type=int, default=512, help="prompt length in tokens (about)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--ratios", default="0.5,0.9")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, device="cpu")
    context, _ = passkey_items(lm, args.length, 1, seed=0)[0]
    enc = {**tokenize(lm, [context + PASSKEY_QUESTION]), "logits_to_keep": 1}  # decode reads the mask only
    ratios = [0.0, *(float(r) for r in args.ratios.split(","))]
    one_round(lm, enc, ratios, 2)  # warm-up
    rounds = [one_round(lm, enc, ratios, args.new_tokens) for _ in range(args.rounds)]
    prefill = statistics.median(r["prefill_s"] for r in rounds)
    base_token = statistics.median(r[0.0]["per_token_s"] for r in rounds)
    print(f"{lm.info.name}: {enc['input_ids'].shape[1]} prompt tokens, {args.new_tokens} new tokens, {args.rounds} "
          f"rounds, {args.threads} thread(s); prefill {prefill:.2f} s, "
          f"KV {rounds[0]['uncompressed_bytes'] / 2**20:.2f} MiB")
    print("| L2 ratio | KV held | ÷ uncompressed | compression | ÷ prefill | decode per token | ÷ uncompressed |")
    print("|---|---|---|---|---|---|---|")
    for ratio in ratios:
        held = rounds[0][ratio]["kv_bytes"]
        compress = statistics.median(r[ratio]["compress_s"] for r in rounds)
        token = statistics.median(r[ratio]["per_token_s"] for r in rounds)
        print(f"| {ratio:g} | {held / 2**20:.2f} MiB | {held / rounds[0]['uncompressed_bytes']:.3f} | "
              f"{1000 * compress:.1f} ms | {100 * compress / prefill:.2f} % | {1000 * token:.1f} ms | "
              f"{token / base_token:.3f} |")


if __name__ == "__main__":
    main()
