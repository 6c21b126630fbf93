"""``sparekit kv bench``: passkey, needle-in-a-haystack and perplexity under KV compression.

Compression acts only after the prompt pass, so each batch of prompts runs its prompt
pass once; every (method, ratio) then decodes from its own copy of that cache under
its :class:`~sparekit.kv.Press`, exactly as ``generate`` would after the same prompt
pass. Ratio 0 is the uncompressed baseline every method shares.

* ``passkey``: a 5-digit key hidden at a seeded depth in repeated filler
  (Mohtashami & Jaggi 2023); correct when the greedy continuation contains it.
* ``needle``: a "special magic word" sentence hidden in shipped Wikipedia passages
  (NQ-Swap contexts held out by :func:`sparekit.sae.corpus.nqswap_passages`).
  In both, the context alone is the prompt; its cache is compressed and the question is
  then read through it (as in kvpress and the paper), so even the first answer token
  depends on what was kept.
* ``perplexity``: the last ``ppl_tokens`` tokens of a Wikipedia window, scored after its
  compressed prefix (tokens the compressed cache predicts; the first, predicted by the
  prompt pass, is left out).

Knowledge conflicts (``sparekit kv conflict``) are in :mod:`sparekit.kv.sweep`.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers.cache_utils import Cache

from sparekit.errors import SparekitError
from sparekit.evaluation.generation import batches, padded_positions, tokenize
from sparekit.hooks import cache_keyword
from sparekit.kv.compress import PRESSES, Press, cache_bytes
from sparekit.models.loading import LoadedModel
from sparekit.reporting.figures import finish_figure, pyplot
from sparekit.utils.config import option
from sparekit.utils.io import atomic_write_json, read_json
from sparekit.utils.registry import unknown_name

TASKS = ("passkey", "needle", "perplexity")
_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
_WORDS = ("umbrella", "volcano", "lantern", "harbour", "pepper", "glacier", "violin", "meadow", "compass", "falcon",
          "orchid", "anchor", "saddle", "thimble", "walnut", "canyon")


DEFAULT_METHODS = ("l2", "l2-inverse", "random", "recent")
PRESS_FIELDS = ("skip_layers", "min_length", "keep_last", "seed")  # the grid's fields a press may take


@dataclass(frozen=True)
class KVGrid:
    """The (method, ratio) cells a KV benchmark runs and the press options they share; checked when built."""

    ratios: tuple[float, ...] = option((0.0, 0.25, 0.5, 0.75, 0.9),
                                       help="Shares of each prompt's KV pairs evicted (0: the shared baseline).")
    methods: tuple[str, ...] = option(DEFAULT_METHODS,
                                      help="l2 (keep lowest key norms), l2-inverse, random, recent, recent-sinks "
                                           "(4 sinks + window), snapkv.")
    skip_layers: tuple[int, ...] = option((0, 1), help="Layers left uncompressed.")
    keep_last: int = option(8, min=0, help="Last prompt positions always kept.")
    min_length: int = option(128, min=0, help="Prompts shorter than this are not compressed.")
    seed: int = option(0, help="Seed of the items (and their demonstrations) and of the random method.")
    batch_size: int = option(4, min=1, help="Prompts per forward pass.")

    def __post_init__(self) -> None:
        for method in self.methods:
            for ratio in self.ratios:
                self.press(method, ratio)  # an unknown method or a bad ratio fails now, not after a model loads

    def cells(self) -> list[tuple[str, float]]:
        """(method, ratio) pairs to run: ratio 0 once (as ``none``), then every method at every other ratio."""
        return [("none", 0.0)] * (0.0 in self.ratios) + [(m, r) for m in self.methods for r in self.ratios if r > 0]

    def press(self, method: str, ratio: float) -> Press | None:
        """The press of one cell (``None`` at ratio 0), with the grid's options it takes."""
        if ratio == 0:
            return None
        cls = PRESSES.lookup(method, where="--methods")
        return cls(ratio=ratio, **{name: getattr(self, name) for name in PRESS_FIELDS if name in cls.options()})


@dataclass(frozen=True)
class KVBenchConfig(KVGrid):
    """What ``sparekit kv bench`` measures; the run directory keeps one JSON part per (task, length)."""

    tasks: tuple[str, ...] = option(TASKS, help="passkey, needle, perplexity.")
    lengths: tuple[int, ...] = option((512, 1024), help="Prompt lengths in tokens.")
    items: int = option(4, min=1, help="Prompts (or perplexity windows) per task and length.")
    ppl_tokens: int = option(64, min=2, help="Tokens scored after each perplexity window's compressed prefix.")

    def __post_init__(self) -> None:
        super().__post_init__()
        for task in self.tasks:
            if task not in TASKS:
                raise unknown_name("task", task, TASKS, where="--tasks")


def _token_length(lm: LoadedModel, text: str) -> int:
    return len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


def sentences(pieces: Sequence[str]) -> list[str]:
    """The sentences of ``pieces``, in order (split after ``.``, ``!`` or ``?``)."""
    return [s for piece in pieces for s in re.split(r"(?<=[.!?])\s+", piece) if s]


def _fill(lm: LoadedModel, pieces: Sequence[str], budget: int) -> list[str]:
    """Sentences of ``pieces`` (cycled) until the next would pass ``budget`` tokens."""
    hay = sentences(pieces)
    out, used = [], 0
    for i in range(20 * budget):
        sentence = hay[i % len(hay)]
        cost = _token_length(lm, sentence) + 1
        if used + cost > budget:
            if budget - used < 16:
                break
            continue  # a long sentence: a shorter one may still fit
        out.append(sentence)
        used += cost
    return out


def _hide(lm: LoadedModel, pieces: list[str], secret: str, length: int, rng: random.Random) -> str:
    """``secret`` at a seeded depth (10-90 %) of a haystack of ``pieces``; about ``length`` tokens."""
    hay = _fill(lm, pieces, length - _token_length(lm, secret) - 2)
    depth = round(rng.uniform(0.1, 0.9) * len(hay))
    return " ".join(hay[:depth] + [secret] + hay[depth:])


PASSKEY_QUESTION = " What is the pass key? The pass key is"
NEEDLE_QUESTION = "\nWhat is the special magic word? The special magic word is"


def passkey_items(lm: LoadedModel, length: int, n: int, seed: int) -> list[tuple[str, str]]:
    """(context, key) pairs; the context is followed by :data:`PASSKEY_QUESTION`."""
    rng = random.Random(f"passkey:{seed}:{length}")
    intro = "There is a pass key hidden inside a lot of irrelevant text. Find it and remember it. "
    budget = length - _token_length(lm, intro + PASSKEY_QUESTION)
    items = []
    for _ in range(n):
        key = str(rng.randint(10000, 99999))
        items.append((intro + _hide(lm, [_FILLER], f"The pass key is {key}. Remember it. {key} is the pass key.",
                                    budget, rng), key))
    return items


def needle_items(lm: LoadedModel, passages: Sequence[str], length: int, n: int, seed: int) -> list[tuple[str, str]]:
    """(context, word) pairs; the context is followed by :data:`NEEDLE_QUESTION`."""
    rng = random.Random(f"needle:{seed}:{length}")
    budget = length - _token_length(lm, NEEDLE_QUESTION)
    items = []
    for _ in range(n):
        word = rng.choice(_WORDS)
        start = rng.randrange(len(passages))
        pieces = list(passages[start:]) + list(passages[:start])
        items.append((_hide(lm, pieces, f"The special magic word is {word}.", budget, rng), word))
    return items


def perplexity_windows(lm: LoadedModel, passages: Sequence[str], length: int, n: int, seed: int) -> list[list[int]]:
    """``n`` token windows of exactly ``length`` tokens from the passages joined in a seeded order."""
    order = list(passages)
    random.Random(f"ppl:{seed}").shuffle(order)
    ids: list[int] = []
    windows = []
    for text in order:
        ids += lm.tokenizer(text + "\n", add_special_tokens=False)["input_ids"]
        while len(ids) >= length and len(windows) < n:
            windows.append(ids[:length])
            ids = ids[length:]
        if len(windows) == n:
            break
    return windows


@torch.inference_mode()
def _prompt_pass(lm: LoadedModel, enc: dict) -> tuple[object, torch.Tensor]:
    # positions count real tokens, as generate's do: a left-padded row's question then follows its last token
    out = lm.model(**{"position_ids": padded_positions(enc["attention_mask"]), **enc}, use_cache=True)
    return getattr(out, "cache", None) or out.past_key_values, out.logits[:, -1]


@dataclass
class Prefill:
    """One uncompressed prompt pass that every (method, ratio) cell copies and compresses."""

    cache: Cache
    last_logits: torch.Tensor
    observed: dict[int, Any]  # what the query-aware presses read of the pass (snapkv's window queries)


def prefill(lm: LoadedModel, enc: dict, presses: Iterable[Press | None]) -> Prefill:
    """The prompt pass of ``enc``, run once inside a press that reads it (if any) so that it observes.

    A press compresses after the prompt pass and never changes it, so this pass is the
    uncompressed one; presses reading it must differ in ratio only (one observation serves them all).
    """
    readers = {replace(p, ratio=0.0) for p in presses if p is not None and p.reads_prompt_pass}
    if len(readers) > 1:
        raise SparekitError("presses that read the prompt pass must share every option but the ratio",
                            f"got {', '.join(map(repr, readers))}")
    observer = next(iter(readers), None)
    with observer(lm) if observer else nullcontext() as kv:
        cache, last = _prompt_pass(lm, enc)
    return Prefill(cache, last, kv.observed if kv else {})


@torch.inference_mode()
def decode(lm: LoadedModel, enc: dict, pre: Prefill, steps: int, press: Press | None, stop_at_newline: bool = False,
           question: torch.Tensor | None = None, question_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Greedy tokens ``[batch, ≤ steps]`` from a copy of a finished prompt pass, under ``press`` (none: uncompressed).

    With ``question`` (token ids ``[batch, q]``, left-padded as ``question_mask`` says) the
    question is read through the compressed cache first, as kvpress and the paper evaluate
    (the context is compressed before the question is seen); without it, the first token
    comes from the uncompressed prompt pass.
    With ``stop_at_newline`` it stops once every row has written a newline (answers are one line).
    """
    mask = enc["attention_mask"]
    position = mask.sum(-1, keepdim=True)
    keyword = cache_keyword(lm.model)
    last_logits = pre.last_logits
    with press(lm, pre.observed) if press else nullcontext() as kv:
        cache = copy.deepcopy(pre.cache)
        start = time.perf_counter()
        if question is not None:
            asked = torch.ones_like(question) if question_mask is None else question_mask.to(question.device)
            mask = torch.cat([mask, asked], dim=-1)
            last_logits = lm.model(input_ids=question, attention_mask=mask, position_ids=position + asked.cumsum(-1) - 1,
                                   use_cache=True, **{keyword: cache}).logits[:, -1]
            position = position + asked.sum(-1, keepdim=True)
        token = last_logits.argmax(-1, keepdim=True)
        tokens = [token]
        for _ in range(steps - 1):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            out = lm.model(input_ids=token, attention_mask=mask, position_ids=position, use_cache=True, **{keyword: cache})
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
            position = position + 1
            if stop_at_newline and all("\n" in t for t in lm.tokenizer.batch_decode(torch.cat(tokens, dim=-1))):
                break
    seconds = time.perf_counter() - start
    return torch.cat(tokens, dim=-1), {"kv_bytes": kv.kv_bytes if kv else cache_bytes(pre.cache), "decode_s": seconds}


def _retrieval(lm: LoadedModel, items: list[tuple[str, str]], question: str, config: KVBenchConfig,
               steps: int) -> dict:
    """Accuracy, KV bytes and decode time per (method, ratio) on (context, answer) items.

    The context's cache is compressed, then ``question`` is read through it.
    """
    rows: dict[tuple[str, float], dict] = {}
    question_ids = lm.tokenizer(question, add_special_tokens=False, return_tensors="pt")["input_ids"]
    for chunk in batches(items, config.batch_size):
        enc = tokenize(lm, [context for context, _ in chunk])
        pre = prefill(lm, enc, [config.press(m, r) for m, r in config.cells()])
        asked = question_ids.to(lm.model.device).expand(len(chunk), -1)
        for method, ratio in config.cells():
            tokens, stats = decode(lm, enc, pre, steps, config.press(method, ratio), question=asked)
            texts = lm.tokenizer.batch_decode(tokens, skip_special_tokens=True)
            row = rows.setdefault((method, ratio), {"correct": 0, "n": 0, "kv_bytes": 0, "decode_s": 0.0, "outputs": []})
            row["correct"] += sum(answer.lower() in text.lower() for text, (_, answer) in zip(texts, chunk))
            row["n"] += len(chunk)
            row["kv_bytes"] += stats["kv_bytes"]
            row["decode_s"] += stats["decode_s"]
            row["outputs"] += texts
    return relative_to_uncompressed(rows, lambda r: {"accuracy": r["correct"] / r["n"], "outputs": r["outputs"]})


def continuation_nll(lm: LoadedModel, ids: torch.Tensor, scored: int, presses: dict) -> dict:
    """Per (cell, row) summed NLL of the last ``scored - 1`` tokens of ``ids`` read through each press's
    compressed copy of one prompt pass over the rest; ``presses`` maps a cell to its press (``None``: uncompressed).

    Returns ``{cell: (nll [batch], kv_bytes, seconds)}``.
    """
    keyword = cache_keyword(lm.model)
    prefix, rest = ids[:, :-scored], ids[:, -scored:]
    enc = {"input_ids": prefix, "attention_mask": torch.ones_like(prefix)}
    pre = prefill(lm, enc, presses.values())
    position = torch.arange(prefix.shape[1], ids.shape[1], device=ids.device).expand(len(ids), -1)
    out = {}
    for cell, press in presses.items():
        with press(lm, pre.observed) if press else nullcontext() as kv, torch.inference_mode():
            copied = copy.deepcopy(pre.cache)
            start = time.perf_counter()
            logits = lm.model(input_ids=rest, attention_mask=torch.ones_like(ids), position_ids=position,
                              use_cache=True, **{keyword: copied}).logits
        seconds = time.perf_counter() - start
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), rest[:, 1:], reduction="none")
        out[cell] = (nll.sum(-1), kv.kv_bytes if kv else cache_bytes(pre.cache), seconds)
    return out


def _perplexity(lm: LoadedModel, windows: list[list[int]], config: KVBenchConfig) -> dict:
    rows: dict[tuple[str, float], dict] = {}
    for chunk in batches(windows, config.batch_size):
        ids = torch.tensor(chunk, device=lm.model.device)
        presses = {cell: config.press(*cell) for cell in config.cells()}
        for cell, (nll, kv_bytes, seconds) in continuation_nll(lm, ids, config.ppl_tokens, presses).items():
            row = rows.setdefault(cell, {"nll": 0.0, "tokens": 0, "kv_bytes": 0, "decode_s": 0.0})
            row["nll"] += float(nll.sum())
            row["tokens"] += len(chunk) * (config.ppl_tokens - 1)
            row["kv_bytes"] += kv_bytes
            row["decode_s"] += seconds
    return relative_to_uncompressed(rows, lambda r: {"perplexity": math.exp(r["nll"] / r["tokens"]),
                                                     "nll": r["nll"] / r["tokens"]})


def relative_to_uncompressed(rows: dict, metrics) -> dict:
    """``{method: {ratio: row}}`` with ratio 0 copied under every method, bytes and time relative to it."""
    base = rows.get(("none", 0.0))
    out: dict[str, dict[str, dict]] = {}
    for (method, ratio), row in rows.items():
        entry = {**metrics(row), "kv_bytes": row["kv_bytes"], "decode_s": round(row["decode_s"], 3)}
        if base is not None:
            entry["kv_ratio"] = row["kv_bytes"] / base["kv_bytes"]
            entry["time_ratio"] = row["decode_s"] / base["decode_s"]
        out.setdefault(method, {})[f"{ratio:g}"] = entry
    methods = {m for m, _ in rows if m != "none"}
    if "none" in out and methods:
        none = out.pop("none")
        for method in methods:
            out[method] = {**none, **out[method]}
    return out


def run_bench(lm: LoadedModel, config: KVBenchConfig, out_dir: Path, passages: Sequence[str]) -> dict:
    """Every task at every length; parts already in ``out_dir/parts`` are read back (resume)."""
    results: dict[str, dict] = {}
    tokens: dict[str, dict] = {}
    for task in config.tasks:
        for length in config.lengths:
            part = out_dir / "parts" / f"{task}-{length}.json"
            if part.is_file() and read_json(part)["config"] == _part_config(config):
                saved = read_json(part)
            else:
                if task == "perplexity":
                    windows = perplexity_windows(lm, passages, length + config.ppl_tokens, config.items, config.seed)
                    result, n_tokens = _perplexity(lm, windows, config), [length] * len(windows)
                else:
                    if task == "passkey":
                        items, question = passkey_items(lm, length, config.items, config.seed), PASSKEY_QUESTION
                    else:
                        items = needle_items(lm, passages, length, config.items, config.seed)
                        question = NEEDLE_QUESTION
                    result = _retrieval(lm, items, question, config, steps=7 if task == "passkey" else 4)
                    n_tokens = [len(lm.tokenizer(context + question)["input_ids"]) for context, _ in items]
                saved = {"config": _part_config(config), "result": result,
                         "prompt_tokens": sum(n_tokens) / len(n_tokens)}
                atomic_write_json(part, saved)
            results.setdefault(task, {})[str(length)] = saved["result"]
            tokens.setdefault(task, {})[str(length)] = saved["prompt_tokens"]
    return {"config": asdict(config), "model": lm.info.name, "model_hash": lm.info.model_hash,
            "mean_prompt_tokens": tokens, "largest_ratio_within_1_point": largest_safe_ratio(results),
            "results": results}


def _part_config(config: KVBenchConfig) -> dict:
    """The settings a part depends on, as its JSON reads back (tuples become lists)."""
    return json.loads(json.dumps({k: v for k, v in asdict(config).items() if k not in ("tasks", "lengths")}))


def largest_safe_ratio(results: dict, method: str = "l2") -> dict:
    """Per task and length: the largest ratio at which ``method`` stays within 1 point of ratio 0.

    Accuracy tasks: within 1 percentage point; perplexity: within 1 % of the baseline.
    """
    out: dict[str, dict[str, float]] = {}
    for task, by_length in results.items():
        for length, by_method in by_length.items():
            curve = by_method.get(method, {})
            base = curve.get("0")
            if base is None:
                continue
            key = "perplexity" if "perplexity" in base else "accuracy"
            ok = [float(r) for r, row in curve.items()
                  if (row[key] <= base[key] * 1.01 if key == "perplexity" else row[key] >= base[key] - 0.01)]
            out.setdefault(task, {})[length] = max(ok)
    return out


def markdown_tables(summary: dict) -> str:
    """One table per task: rows method × length, columns ratio (accuracy %, or perplexity)."""
    lines = []
    for task, by_length in summary["results"].items():
        ratios = sorted({r for by_method in by_length.values() for curve in by_method.values() for r in curve}, key=float)
        lines += [f"**{task}** ({'perplexity, lower is better' if task == 'perplexity' else 'accuracy %'})", "",
                  "| method | length | " + " | ".join(f"r={r}" for r in ratios) + " | KV held at r=0.5 | decode time at r=0.5 |",
                  "|---|---|" + "---|" * (len(ratios) + 2)]
        for length, by_method in by_length.items():
            for method, curve in by_method.items():
                key = "perplexity" if task == "perplexity" else "accuracy"
                cells = [(f"{curve[r][key]:.2f}" if key == "perplexity" else f"{100 * curve[r][key]:.0f}")
                         if r in curve else "" for r in ratios]
                half = curve.get("0.5", {})
                kv = f"{half['kv_ratio']:.2f}" if "kv_ratio" in half else ""
                tm = f"{half['time_ratio']:.2f}" if "time_ratio" in half else ""
                lines.append(f"| {method} | {length} | " + " | ".join(cells) + f" | {kv} | {tm} |")
        lines.append("")
    return "\n".join(lines)


def plot_bench(summary: dict, path: str | Path) -> Path:
    """Rows: tasks; columns: context lengths; one line per method (score vs compression ratio)."""
    plt = pyplot()
    results = summary["results"]
    lengths = sorted({length for by_length in results.values() for length in by_length}, key=int)
    fig, axes = plt.subplots(len(results), len(lengths), figsize=(4.2 * len(lengths), 3.4 * len(results)),
                             squeeze=False)
    for row_axes, (task, by_length) in zip(axes, results.items()):
        for ax, length in zip(row_axes, lengths):
            for i, (method, curve) in enumerate(by_length.get(length, {}).items()):
                ratios = sorted(curve, key=float)
                key = "perplexity" if task == "perplexity" else "accuracy"
                scale = 1.0 if key == "perplexity" else 100.0
                ax.plot([float(r) for r in ratios], [scale * curve[r][key] for r in ratios], marker="os^D"[i % 4],
                        label=method, color=f"C{i}")
            ax.set_title(f"{task}, {length} tokens", fontsize=9)
            ax.set_xlabel("compression ratio (share of prompt KV evicted)")
            ax.set_ylabel("perplexity ↓" if task == "perplexity" else "accuracy (%) ↑")
            ax.grid(alpha=0.3)
    return finish_figure(fig, [axes[0][0]], f"KV compression on {summary['model']}", path)
