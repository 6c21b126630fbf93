"""Batched greedy generation with left padding, cut at the first newline.

Steering methods wrap these calls in their own context (hooks or logits
processors); generation itself knows nothing about steering.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from sparekit.models.loading import LoadedModel


class _NewlineStop(StoppingCriteria):
    """Marks a row finished once its generated text contains a newline."""

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        new = input_ids[:, self.prompt_len:]
        texts = self.tokenizer.batch_decode(new[:, -2:], skip_special_tokens=True)
        return torch.tensor(["\n" in t for t in texts], device=input_ids.device)


def batches(items: Sequence, batch_size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


def padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting real tokens only (0 on padding), as ``generate`` computes them.

    Absolute-position models (GPT-2) see a different text under left padding without them.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def tokenize(lm: LoadedModel, prompts: Sequence[str], position_ids: bool = False) -> dict[str, torch.Tensor]:
    """Left-padded batch on the model's device; ``position_ids=True`` for a plain forward pass."""
    enc = lm.tokenizer(list(prompts), return_tensors="pt", padding=True)
    enc = {k: v.to(lm.model.device) for k, v in enc.items()}
    if position_ids:
        enc["position_ids"] = padded_positions(enc["attention_mask"])
    return enc


@torch.inference_mode()
def greedy_generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    max_new_tokens: int = 12,
    batch_size: int = 8,
    stop_at_newline: bool = True,
    logits_processor: LogitsProcessorList | None = None,
    progress: bool = False,
) -> list[str]:
    """Greedy completions of ``prompts``; with ``stop_at_newline`` each is cut at its first newline."""
    outputs: list[str] = []
    bar = tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress, leave=False)
    for chunk in batches(prompts, batch_size):
        enc = tokenize(lm, chunk)
        prompt_len = enc["input_ids"].shape[1]
        stopping = StoppingCriteriaList([_NewlineStop(lm.tokenizer, prompt_len)]) if stop_at_newline else None
        generated = lm.model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            stopping_criteria=stopping,
            logits_processor=logits_processor,
            pad_token_id=lm.tokenizer.pad_token_id,
            top_p=None,
            top_k=None,
            temperature=None,
        )
        texts = lm.tokenizer.batch_decode(generated[:, prompt_len:], skip_special_tokens=True)
        outputs.extend(t.split("\n", 1)[0].strip() if stop_at_newline else t for t in texts)
        bar.update(len(chunk))
    bar.close()
    return outputs
