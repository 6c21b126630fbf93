"""What a residual stream, a direction in it, or a component does to the output: the logit lens.

:func:`logit_lens` reads a residual as if it were the last block's output (DoLa's premature
layers, JUICE's head scores). The rest is shared by the selection rules that look at a
feature's or a head's effect on the *output* rather than at its activations (SpARE's
``output_score`` selection, JUICE's head scores).
The answer is scored by its first token, tokenized with a leading space as the model
writes it after ``answer:``; a token that is only whitespace (a tokenizer that splits the
space off) is skipped, so the score is about the answer, not the space before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparekit.models.loading import LoadedModel

_FINAL_NORM = {"gpt2": "transformer.ln_f"}


def final_norm(lm: LoadedModel) -> torch.nn.Module:
    """The normalisation between the last block and the LM head."""
    return lm.model.get_submodule(_FINAL_NORM.get(lm.info.model_type, "model.norm"))


def logit_lens(lm: LoadedModel, h: torch.Tensor) -> torch.Tensor:
    """Logits the model would emit if residual ``h`` (``[..., d]``) were its last block's output."""
    logits = lm.model.get_output_embeddings()(final_norm(lm)(h))
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def answer_first_tokens(lm: LoadedModel, answers: Sequence[str]) -> torch.Tensor:
    """``[n]`` id of each answer's first non-blank token (``" " + answer``, no special tokens)."""
    firsts = []
    for answer in answers:
        ids = lm.tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
        words = [i for i in ids if lm.tokenizer.decode([i]).strip()]
        firsts.append((words or ids or [lm.tokenizer.unk_token_id or 0])[0])
    return torch.tensor(firsts, dtype=torch.long)


@torch.no_grad()
def direction_logits(lm: LoadedModel, directions: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Logit lens of bare directions ``[n, d]`` on ``token_ids`` ``[m]`` -> ``[n, m]``.

    The direction goes through the final norm and the unembedding as if it were the last
    block's output; ``norm(0)`` is subtracted so a LayerNorm's bias (the same for every
    direction) does not count. Logit soft-capping (monotone) is left out.
    """
    norm = final_norm(lm)
    weight = next(norm.parameters())
    d = directions.to(weight.device, weight.dtype)
    lensed = norm(d) - norm(torch.zeros_like(d[:1]))
    unembed = lm.model.get_output_embeddings().weight[token_ids.to(weight.device)]
    return (lensed @ unembed.T).float().cpu()
