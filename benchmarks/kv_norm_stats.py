"""Does L2 KV compression's premise hold on a model? Key-norm spread and norm ↔ attention, per layer.

Devoto et al. (2024) keep the keys of lowest L2 norm because, on Llama-family models, those
draw the most attention. For each model, on ``--prompts`` Wikipedia windows of ``--length``
tokens (held-out NQ-Swap passages, as the KV benchmark's perplexity task), per layer and KV
head: the coefficient of variation of the key norms (how much an L2 ranking can tell keys
apart) and the Spearman correlation between a key's norm and the attention it receives from
the last ``--queries`` queries, averaged over the head's query group (the premise: negative).
Sliding-window layers are read over the keys their cache holds (the last window).

    python benchmarks/kv_norm_stats.py [--models default,smollm2-135m] [--length 1024] [--prompts 3]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from sparekit.data.loaders import NQSWAP_LOCAL
from sparekit.kv.bench import perplexity_windows
from sparekit.kv.compress import mean_norm_spread
from sparekit.models import load_model
from sparekit.sae.corpus import nqswap_passages


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Rank correlation of two 1-D tensors (ties ranked in order: keys rarely tie in float32)."""
    ranks = torch.stack([x.argsort().argsort(), y.argsort().argsort()]).float()
    return float(torch.corrcoef(ranks)[0, 1])


@torch.inference_mode()
def layer_stats(lm, ids: list[int], queries: int) -> list[dict]:
    """Per layer: kind, and per KV head the key-norm CV and Spearman(norm, attention received)."""
    out = lm.model(input_ids=torch.tensor([ids]), use_cache=True, output_attentions=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    rows = []
    for attn, layer in zip(out.attentions, cache.layers):
        keys = layer.keys[0].float()  # [kv_heads, held, dim]
        kv_heads, held = keys.shape[:2]
        groups = attn[0, :, -queries:, -held:].float().unflatten(0, (kv_heads, -1))  # [kv, group, q, held]
        received = groups.mean(dim=(1, 2))
        norms = keys.norm(dim=-1)
        rows.append({"sliding": bool(layer.is_sliding),
                     "cv": [mean_norm_spread(keys[h][None, None]) for h in range(kv_heads)],
                     "rho": [spearman(norms[h], received[h]) for h in range(kv_heads)]})
    return rows


def model_table(name: str, windows: int, length: int, queries: int, passages: list[str]) -> list[str]:
    """Markdown rows: per layer (CV and Spearman averaged over heads and prompts), then model means."""
    lm = load_model(name, device="cpu")
    lm.model.set_attn_implementation("eager")  # sdpa returns no attention weights
    special = lm.tokenizer("")["input_ids"]  # what the tokenizer puts first (Gemma's BOS; nothing on SmolLM2)
    per_prompt = [layer_stats(lm, special + ids[:length - len(special)], queries)
                  for ids in perplexity_windows(lm, passages, length, windows, seed=0)]
    lines, everything = [], {"all": ([], []), "global": ([], [])}
    for layer, rows in enumerate(zip(*per_prompt)):
        cvs = [v for row in rows for v in row["cv"]]
        rhos = [v for row in rows for v in row["rho"]]
        kind = "sliding" if rows[0]["sliding"] else "global"
        for scope in ("all",) + ("global",) * (kind == "global"):
            everything[scope][0].extend(cvs)
            everything[scope][1].extend(rhos)
        lines.append(f"| {lm.info.name} | {layer} | {kind} | {statistics.mean(cvs):.3f} | {statistics.mean(rhos):+.3f} "
                     f"| {min(rhos):+.2f} … {max(rhos):+.2f} | {sum(r < 0 for r in rhos)}/{len(rhos)} |")
    for scope, (cvs, rhos) in everything.items():
        if rhos and not (scope == "global" and len(rhos) == len(everything["all"][1])):
            lines.append(f"| **{lm.info.name}** | **mean, {scope} layers** | | **{statistics.mean(cvs):.3f}** | "
                         f"**{statistics.mean(rhos):+.3f}** | {min(rhos):+.2f} … {max(rhos):+.2f} "
                         f"| {sum(r < 0 for r in rhos)}/{len(rhos)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default,smollm2-135m")
    parser.add_argument("--length", type=int, default=1024, help="tokens per prompt")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--queries", type=int, default=32, help="last queries whose attention is read")
    args = parser.parse_args()
    torch.set_num_threads(1)
    passages = nqswap_passages(NQSWAP_LOCAL)[1]
    print("| model | layer | kind | key-norm CV | Spearman(norm, attention received) | range over heads × prompts "
          "| negative |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        print("\n".join(model_table(name, args.prompts, args.length, args.queries, passages)), flush=True)


if __name__ == "__main__":
    main()
