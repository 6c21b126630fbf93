"""A second batch of prompts run in lockstep with ``generate`` (for decoding-level contrasts).

CAD needs the logits of the prompts without their context, DoLa the premature layer of
the same sequence, at every decoding step. :class:`ShadowForward` keeps its own KV cache
and, at each logits-processor call, feeds the shadow batch the tokens ``generate`` has
appended since the previous call. Left padding is handled like ``generate`` does:
position ids from the attention-mask cumsum, one mask column per fed token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from sparekit.evaluation.generation import padded_positions, tokenize
from sparekit.hooks import Hooks, cache_keyword
from sparekit.models.loading import LoadedModel


class ShadowForward:
    """Incremental forward passes over ``texts``, following the tokens another generation picks."""

    def __init__(self, lm: LoadedModel, texts: Sequence[str]):
        self.lm = lm
        self.texts = list(texts)
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._seen = 0

    def step(self, input_ids: torch.Tensor, hooks: Hooks | None = None):
        """Run the shadow batch up to the newest token of ``input_ids`` (the main generation so far).

        The first call (or a call with a sequence no longer than the last one, i.e. a new
        ``generate``) runs the shadow prompts; later calls feed only the new tokens. With
        ``hooks`` the pass runs inside that context; it returns ``None`` if a hook stopped it early.
        Logits are computed for the newest position only.
        """
        if self._cache is None or input_ids.shape[1] <= self._seen:
            enc = tokenize(self.lm, self.texts)
            ids, self._mask = enc["input_ids"], enc["attention_mask"]
            self._cache = DynamicCache(config=self.lm.model.config)
        else:
            ids = input_ids[:, self._seen:]
            self._mask = torch.cat([self._mask, self._mask.new_ones(ids.shape)], dim=1)
        self._seen = input_ids.shape[1]
        positions = padded_positions(self._mask)[:, -ids.shape[1]:]
        inputs = dict(input_ids=ids, attention_mask=self._mask, position_ids=positions, use_cache=True,
                      logits_to_keep=1, **{cache_keyword(self.lm.model): self._cache})
        if hooks is None:
            return self.lm.model(**inputs)
        with hooks:
            return self.lm.model(**inputs)
        return None
