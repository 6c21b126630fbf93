"""KV-cache compression on the default model: KV bytes held and generation time, ÷ uncompressed.

One passkey prompt of about ``--length`` tokens, ``--new-tokens`` greedy tokens through
``lm.model.generate``, uncompressed and under ``kv_compress`` (L2) at each ratio, in
interleaved rounds (medians), so the ratios hold on a busy machine. The decode share is
the generate time minus a prompt-pass-only generate (1 new token) of the same round.

    python benchmarks/bench_kv.py [--length 512] [--new-tokens 32] [--ratios 0.5,0.9] [--rounds 3]

``--norms`` instead tests the method's premise on the same prompt: per layer, how much key
norms vary (coefficient of variation) and the Spearman correlation between a key's norm
and the attention it receives from the last 32 queries (the paper: negative).
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from sparekit.evaluation.generation import tokenize
from sparekit.kv import kv_compress
from sparekit.kv.bench import PASSKEY_QUESTION, passkey_items
from sparekit.models import load_model


def timed_generate(lm, enc, new_tokens: int, ratio: float | None) -> tuple[float, tuple[int, int] | None]:
    """Seconds, and (KV bytes of the prompt held after pruning, before pruning) when compressed."""
    context = kv_compress(lm, ratio=ratio, method="l2") if ratio else nullcontext()
    start = time.perf_counter()
    with context as kv, torch.inference_mode():
        lm.model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          pad_token_id=lm.tokenizer.pad_token_id)
    return time.perf_counter() - start, (kv.kv_bytes, kv.kv_bytes_uncompressed) if kv else None


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort(-1).argsort(-1).float()


@torch.inference_mode()
def norm_report(lm, enc) -> None:
    """Key-norm spread and norm/attention rank correlation per layer (eager attention to read weights)."""
    lm.model.set_attn_implementation("eager")
    out = lm.model(**enc, use_cache=True, output_attentions=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    print("layer  kind     key-norm CV  Spearman(norm, attention received)")
    for layer, (attn, cache_layer) in enumerate(zip(out.attentions, cache.layers)):
        keys = cache_layer.keys[0, 0].float()  # one KV head on the default model
        received = attn[0, :, -32:, -keys.shape[0]:].float().mean(dim=(0, 1))
        norms = keys.norm(dim=-1)
        rho = torch.corrcoef(torch.stack([_ranks(norms), _ranks(received)]))[0, 1]
        kind = "sliding" if cache_layer.is_sliding else "global"
        print(f"{layer:5d}  {kind:<7}  {float(norms.std() / norms.mean()):11.3f}  {float(rho):+.3f}")
    lm.model.set_attn_implementation("sdpa")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=512, help="prompt length in tokens (about)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--ratios", default="0.5,0.9")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--norms", action="store_true", help="key-norm spread and norm/attention correlation only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lm = load_model("default", device="cpu")
    context, _ = passkey_items(lm, args.length, 1, seed=0)[0]
    enc = tokenize(lm, [context + PASSKEY_QUESTION])
    if args.norms:
        return norm_report(lm, enc)
    ratios = [float(r) for r in args.ratios.split(",")]
    timed_generate(lm, enc, 2, None)  # warm-up
    prompt_only, times, held = [], {r: [] for r in [0.0, *ratios]}, {}
    for _ in range(args.rounds):
        prompt_only.append(timed_generate(lm, enc, 1, None)[0])
        for ratio in times:
            seconds, kv_bytes = timed_generate(lm, enc, args.new_tokens, ratio or None)
            times[ratio].append(seconds)
            if kv_bytes:
                held[ratio], held[0.0] = kv_bytes[0], kv_bytes[1]
    base = statistics.median(times[0.0])
    prefill = statistics.median(prompt_only)
    print(f"{lm.info.name}: {enc['input_ids'].shape[1]} prompt tokens, {args.new_tokens} new tokens, "
          f"{args.rounds} rounds, {args.threads} thread(s); prompt pass alone {prefill:.2f} s")
    print("ratio  KV bytes held       KV ÷ uncompressed  generate s  time ÷ uncompressed  decode ÷ uncompressed")
    for ratio, values in times.items():
        seconds = statistics.median(values)
        kept = held[ratio]
        print(f"{ratio:5.2f}  {kept / 2**20:8.2f} MiB        {kept / held[0.0]:6.3f}            {seconds:7.2f}"
              f"      {seconds / base:6.3f}               {(seconds - prefill) / (base - prefill):6.3f}")


if __name__ == "__main__":
    main()
