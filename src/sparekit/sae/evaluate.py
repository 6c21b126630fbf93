"""How good is an SAE on held-out text: reconstruction, sparsity, and LM loss recovered.

Every statistic skips the BOS position (its norm is ~20x the median on Gemma 3, and
splicing leaves it unchanged) and padding. Loss recovered compares the next-token
cross-entropy when the block output is replaced by the SAE reconstruction against a
clean run (100%) and a zero-ablated block output (0%).
"""

from __future__ import annotations

import heapq
import html
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sparekit.evaluation.generation import batches, tokenize
from sparekit.hooks import Hooks, Site
from sparekit.models.loading import LoadedModel
from sparekit.models.placement import site_device
from sparekit.sae.base import SAE


def _encode_batch(lm: LoadedModel, texts: Sequence[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Left-padded batch and the mask of positions an SAE reads (real tokens after the first)."""
    enc = tokenize(lm, texts, position_ids=True)
    return enc, enc["attention_mask"].bool() & (enc["position_ids"] > 0)


def _token_batches(texts: Sequence[str], max_tokens: int | None, batch_size: int, tokenizer) -> Iterator[list[str]]:
    """Batches of texts, stopping once about ``max_tokens`` tokens have been handed out."""
    used = 0
    for chunk in batches(list(texts), batch_size):
        if max_tokens is not None and used >= max_tokens:
            return
        used += sum(len(ids) for ids in tokenizer(list(chunk))["input_ids"])
        yield list(chunk)


def _sae_layer(sae: SAE) -> int:
    if sae.hook_layer is None:
        raise ValueError("the SAE does not know its layer; load it with layer=")
    return int(sae.hook_layer)


def _beside_the_model(lm: LoadedModel, saes: Sequence[SAE]) -> None:
    """Move each SAE (in place) to the device where its layer computes, so that reading a model on
    a GPU with an SAE loaded on the CPU works, and the activations never leave that device."""
    for sae in saes:
        sae.to(site_device(lm, _sae_layer(sae)))


@torch.inference_mode()
def reconstruction_stats(lm: LoadedModel, saes: Sequence[SAE], texts: Sequence[str], batch_size: int = 8,
                         max_tokens: int | None = None, progress: bool = False) -> list[dict]:
    """Per SAE: ``fvu`` (model units), ``fvu_per_dim`` (mean over standardised dims), ``l0``, ``dead_fraction``."""
    _beside_the_model(lm, saes)
    sites = [Site(_sae_layer(s), s.hook_component) for s in saes]  # type: ignore[arg-type]
    acc = [{"res": 0.0, "sum": 0.0, "sq": 0.0, "l0": 0.0, "fired": torch.zeros(s.d_sae, dtype=torch.bool)}
           for s in saes]
    n = 0
    for chunk in tqdm(list(_token_batches(texts, max_tokens, batch_size, lm.tokenizer)), desc="sae stats",
                      disable=not progress, leave=False):
        enc, keep = _encode_batch(lm, chunk)
        hooks = Hooks(lm)
        for site in dict.fromkeys(sites):
            hooks.capture(site, positions="all", dtype=torch.float32)
        hooks.stop_after_captures()
        with hooks:
            lm.model(**enc, use_cache=False)
        n += int(keep.sum())
        for sae, site, a in zip(saes, sites, acc):
            h = hooks[site][keep]
            z = sae.encode(h)
            a["res"] = a["res"] + (h - sae.decode(z)).double().pow(2).sum(0)
            a["sum"], a["sq"] = a["sum"] + h.double().sum(0), a["sq"] + h.double().pow(2).sum(0)
            a["l0"] += float((z > 0).sum())
            a["fired"] |= (z > 0).any(0).cpu()
    out = []
    for a in acc:
        total = a["sq"] - a["sum"] ** 2 / n
        out.append({"fvu": float(a["res"].sum() / total.sum()), "fvu_per_dim": float((a["res"] / total).mean()),
                    "l0": a["l0"] / n, "dead_fraction": float((~a["fired"]).float().mean()), "tokens": n})
    return out


def _cross_entropy(logits: torch.Tensor, enc: dict, keep: torch.Tensor) -> tuple[float, int]:
    """Summed next-token CE over predictions made at ``keep`` positions with a real next token."""
    use = keep[:, :-1] & enc["attention_mask"][:, 1:].bool()
    targets = enc["input_ids"][:, 1:][use]
    return float(F.cross_entropy(logits[:, :-1][use].float(), targets, reduction="sum")), int(use.sum())


@torch.inference_mode()
def loss_recovered(lm: LoadedModel, saes: Sequence[SAE], texts: Sequence[str], batch_size: int = 4,
                   max_tokens: int | None = 4096, progress: bool = False) -> list[dict]:
    """Per SAE: ``ce_clean``, ``ce_spliced``, ``ce_zero`` (nats/token) and ``loss_recovered`` (0..1)."""
    _beside_the_model(lm, saes)
    totals = [{"spliced": 0.0, "zero": 0.0} for _ in saes]
    clean, count = 0.0, 0
    for chunk in tqdm(list(_token_batches(texts, max_tokens, batch_size, lm.tokenizer)), desc="sae splice",
                      disable=not progress, leave=False):
        enc, keep = _encode_batch(lm, chunk)
        ce, n = _cross_entropy(lm.model(**enc, use_cache=False).logits, enc, keep)
        clean, count = clean + ce, count + n
        for sae, total in zip(saes, totals):
            for name, replace in (("spliced", lambda h, s=sae: s(h).to(h.dtype)), ("zero", torch.zeros_like)):
                def splice(hidden: torch.Tensor, replace=replace) -> torch.Tensor:
                    return torch.where(keep[..., None], replace(hidden), hidden)

                with Hooks(lm).edit(Site(_sae_layer(sae), sae.hook_component), splice, positions="all"):
                    total[name] += _cross_entropy(lm.model(**enc, use_cache=False).logits, enc, keep)[0]
    out = []
    for total in totals:
        ce_clean, ce_spliced, ce_zero = clean / count, total["spliced"] / count, total["zero"] / count
        out.append({"ce_clean": ce_clean, "ce_spliced": ce_spliced, "ce_zero": ce_zero,
                    "loss_recovered": (ce_zero - ce_spliced) / (ce_zero - ce_clean), "ce_tokens": count})
    return out


def evaluate_saes(lm: LoadedModel, saes: Sequence[SAE], texts: Sequence[str], max_tokens: int | None = None,
                  ce_tokens: int | None = 4096, progress: bool = False) -> list[dict]:
    """The ``sparekit sae eval`` table: one dict per SAE."""
    recon = reconstruction_stats(lm, saes, texts, max_tokens=max_tokens, progress=progress)
    ce = loss_recovered(lm, saes, texts, max_tokens=ce_tokens, progress=progress)
    return [{"layer": _sae_layer(s), "d_sae": s.d_sae, "k": s.k, **r, **c} for s, r, c in zip(saes, recon, ce)]


@torch.inference_mode()
def top_activations(lm: LoadedModel, sae: SAE, texts: Sequence[str], latents: Sequence[int], top: int = 5,
                    context: int = 12, batch_size: int = 8, max_tokens: int | None = None,
                    progress: bool = False) -> dict[int, list[dict]]:
    """For each latent, the ``top`` held-out tokens that activate it most, with surrounding tokens."""
    _beside_the_model(lm, [sae])
    site = Site(_sae_layer(sae), sae.hook_component)  # type: ignore[arg-type]
    heaps: dict[int, list] = {int(i): [] for i in latents}
    index = torch.tensor(list(heaps), dtype=torch.long)
    start = 0
    for chunk in tqdm(list(_token_batches(texts, max_tokens, batch_size, lm.tokenizer)), desc="features",
                      disable=not progress, leave=False):
        enc, keep = _encode_batch(lm, chunk)
        with Hooks(lm).capture(site, positions="all", dtype=torch.float32).stop_after_captures() as hooks:
            lm.model(**enc, use_cache=False)
        acts = sae.encode(hooks[site].flatten(0, 1)).view(*keep.shape, -1)[..., index.to(sae.W_enc.device)]
        acts = torch.where(keep[..., None], acts, torch.zeros_like(acts)).cpu()
        for column, latent in enumerate(heaps):
            values, flat = acts[..., column].flatten().topk(min(top, acts[..., column].numel()))
            for value, position in zip(values.tolist(), flat.tolist()):
                if value <= 0:
                    break
                row, col = divmod(position, keep.shape[1])
                item = (value, start + row, col, enc["input_ids"][row].tolist(), acts[row, :, column].tolist())
                (heapq.heappush if len(heaps[latent]) < top else heapq.heappushpop)(heaps[latent], item)
        start += len(chunk)
    tokenizer = lm.tokenizer
    out = {}
    for latent, heap in heaps.items():
        rows = []
        for value, text_index, col, ids, row_acts in sorted(heap, reverse=True):
            lo, hi = max(col - context, 0), min(col + context // 2 + 1, len(ids))
            tokens = [tokenizer.decode([t]) for t in ids[lo:hi]]
            rows.append({"activation": value, "text_index": text_index, "token": tokenizer.decode([ids[col]]),
                         "tokens": tokens, "token_activations": row_acts[lo:hi], "focus": col - lo})
        out[latent] = rows
    return out


def render_text(features: dict[int, list[dict]]) -> str:
    lines = []
    for latent, rows in features.items():
        lines.append(f"latent {latent}" + ("" if rows else ": never fired"))
        for r in rows:
            text = "".join(f"[[{t}]]" if i == r["focus"] else t for i, t in enumerate(r["tokens"]))
            lines.append(f"  {r['activation']:8.2f}  {' '.join(text.split())}")
    return "\n".join(lines)


def render_html(features: dict[int, list[dict]], title: str = "SAE features") -> str:
    """A standalone page: each token shaded by the latent's activation."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:auto}span.t{white-space:pre}"
             "div.r{margin:.3em 0;font-family:monospace}</style>", f"<h1>{html.escape(title)}</h1>"]
    for latent, rows in features.items():
        parts.append(f"<h2>latent {latent}</h2>" + ("" if rows else "<p>never fired</p>"))
        for r in rows:
            peak = max(max(r["token_activations"]), 1e-9)
            spans = "".join(
                f"<span class=t style='background:rgba(255,120,0,{max(a, 0) / peak:.2f})' title='{a:.2f}'>"
                f"{'<b>' if i == r['focus'] else ''}{html.escape(t)}{'</b>' if i == r['focus'] else ''}</span>"
                for i, (t, a) in enumerate(zip(r["tokens"], r["token_activations"])))
            parts.append(f"<div class=r>{r['activation']:.2f} | {spans}</div>")
    return "\n".join(parts)
