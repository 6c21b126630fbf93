"""Last-prompt-token hidden states of a few prompts, in memory (probes, gates, detection)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparekit.evaluation.generation import tokenize
from sparekit.hooks import Hooks, Site
from sparekit.models.loading import LoadedModel


@torch.inference_mode()
def last_token_states(lm: LoadedModel, texts: Sequence[str], sites: Sequence[Site]) -> dict[Site, torch.Tensor]:
    """float32 ``[len(texts), d_model]`` per site; one forward per call, stopped after the deepest site."""
    hooks = Hooks(lm)
    for site in set(sites):
        hooks.capture(site, dtype=torch.float32)
    hooks.stop_after_captures()
    with hooks:
        lm.model(**tokenize(lm, list(texts), position_ids=True), use_cache=False)
    return {site: hooks[site] for site in set(sites)}
