"""A KV cache of prompt prefixes shared across requests (the server's prefix caching).

Three-shot prompts spend most of their tokens on the same demonstrations: ~90 of ~113
tokens of every ``/v1/answer`` request. The prompt pass over that shared prefix is done
once and kept; a batch then runs only each row's own suffix, laid out as
``[prefix][padding][suffix]`` so that the last prompt token stays the last column (where
steering edits and probes read) and position ids, computed by ``generate`` from the
attention mask, skip the padding. Answers equal those of the full prompt pass up to
float rounding (greedy answers: identical in tests/test_serve.py).
"""

from __future__ import annotations

import copy
from collections import OrderedDict, deque
from collections.abc import Sequence

import torch
from transformers import Cache

from sparekit.hooks.core import cache_keyword, last_logits_only, mark_prompt_start
from sparekit.models.loading import LoadedModel
from sparekit.models.placement import input_device


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix every row shares."""
    shortest = min(len(row) for row in rows)
    for i in range(shortest):
        if len({row[i] for row in rows}) != 1:
            return i
    return shortest


class PrefixCache:
    """The KV of shared prompt prefixes, least recently used first out.

    A prefix is kept when it is at least ``min_tokens`` long and shared by every row of a
    batch, or by a lone row and one of the last ``history`` prompts seen; every row keeps
    at least one token of its own for the prompt pass. Models with a sliding attention
    window reuse prefixes only while whole prompts fit in the window.
    """

    def __init__(self, lm: LoadedModel, min_tokens: int = 32, size: int = 4, history: int = 8):
        self.lm, self.min_tokens, self.size = lm, min_tokens, size
        self.entries: OrderedDict[tuple[int, ...], Cache] = OrderedDict()
        self.recent: deque[tuple[int, ...]] = deque(maxlen=history)
        self.window = getattr(lm.model.config, "sliding_window", None)

    def lookup(self, rows: Sequence[Sequence[int]]) -> tuple[int, Cache | None]:
        """``(prefix length, a copy of its KV expanded to the batch)``, or ``(0, None)`` when none applies."""
        limit = min(len(row) for row in rows) - 1
        if self.window is not None and max(len(row) for row in rows) > self.window:
            return 0, None
        length = self._known(rows, limit) or self._new(rows, limit)
        self.recent.extend(tuple(row) for row in rows)
        if length < self.min_tokens:
            return 0, None
        key = tuple(rows[0][:length])
        if key not in self.entries:
            self.entries[key] = self._compute(key)
            if len(self.entries) > self.size:
                self.entries.popitem(last=False)
        self.entries.move_to_end(key)
        cache = copy.deepcopy(self.entries[key])
        cache.batch_repeat_interleave(len(rows))
        mark_prompt_start(cache, length)
        return length, cache

    def _known(self, rows: Sequence[Sequence[int]], limit: int) -> int:
        """The longest kept prefix that every row starts with."""
        fits = [len(key) for key in self.entries
                if len(key) <= limit and all(tuple(row[:len(key)]) == key for row in rows)]
        return max(fits, default=0)

    def _new(self, rows: Sequence[Sequence[int]], limit: int) -> int:
        if len(rows) > 1:
            return min(common_prefix(rows), limit)
        return min(max((common_prefix([rows[0], seen]) for seen in self.recent), default=0), limit)

    @torch.inference_mode()
    def _compute(self, prefix: tuple[int, ...]) -> Cache:
        ids = torch.tensor([prefix], device=input_device(self.lm))
        return cached_forward(self.lm, ids, None)[0]


def cached_forward(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   position_ids: torch.Tensor | None = None, cache: Cache | None = None) -> tuple[Cache, torch.Tensor]:
    """One forward pass extending ``cache`` (a new one when ``None``): the cache, and the float32 logits of
    each row's last position (the LM head runs on that position only, where the model allows it).

    An all-ones mask is dropped, as ``generate`` drops it: the model then takes its faster path without padding.
    """
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    reused = {} if cache is None else {cache_keyword(lm.model): cache}
    out = lm.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                   **last_logits_only(lm.model), **reused)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    return cache, out.logits[:, -1].float()


def prefixed_batch(rows: Sequence[Sequence[int]], prefix: int, pad_id: int, device) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` laid out as ``[prefix][padding][suffix]`` per row."""
    width = prefix + max(len(row) - prefix for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :prefix], mask[i, :prefix] = torch.tensor(row[:prefix]), 1
        own = row[prefix:]
        ids[i, width - len(own):], mask[i, width - len(own):] = torch.tensor(own), 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
