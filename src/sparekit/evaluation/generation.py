"""Batched greedy generation with left padding, cut at the first newline.

Steering methods wrap these calls in their own context (hooks or logits
processors); generation itself knows nothing about steering.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm
from transformers import Cache, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from sparekit.hooks.core import cache_keyword
from sparekit.models.limits import check_prompt_length
from sparekit.models.loading import LoadedModel
from sparekit.models.placement import input_device


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
    """Left-padded batch on the model's device; ``position_ids=True`` for a plain forward pass.

    A batch longer than the model's context, or too large for the memory left, is refused here,
    before any forward pass (every generation and read of a prompt goes through this function).
    """
    enc = lm.tokenizer(list(prompts), return_tensors="pt", padding=True)
    device = input_device(lm)
    check_prompt_length(lm.model, lm.info.name, device, enc["input_ids"].shape[1], len(prompts))
    enc = {k: v.to(device) for k, v in enc.items()}
    if position_ids:
        enc["position_ids"] = padded_positions(enc["attention_mask"])
    return enc


def greedy_call(lm: LoadedModel, enc: dict[str, torch.Tensor], max_new_tokens: int,
                logits_processor: LogitsProcessorList | None, stopping: StoppingCriteriaList | None = None,
                cache: Cache | None = None) -> torch.Tensor:
    """``generate`` in greedy mode, whatever sampling defaults the model's generation config carries.

    ``cache``: a KV cache already holding the first tokens of every row (a reused prompt prefix).
    """
    reused = {} if cache is None else {cache_keyword(lm.model): cache}
    return lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             stopping_criteria=stopping, logits_processor=logits_processor,
                             pad_token_id=lm.tokenizer.pad_token_id, top_p=None, top_k=None, temperature=None,
                             **reused)


@torch.inference_mode()
def greedy_generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    max_new_tokens: int = 12,
    batch_size: int = 8,
    stop_at_newline: bool = True,
    logits_processor: LogitsProcessorList | None = None,
    progress: bool = False,
    first_step: list[torch.Tensor] | None = None,
) -> list[str]:
    """Greedy completions of ``prompts``; with ``stop_at_newline`` each is cut at its first newline.

    ``first_step``: when given, each batch's ``[batch, vocab]`` float32 log-probabilities of the first
    generated token (after ``logits_processor``) are appended to it: the next-token distribution at the
    last prompt token, for free (the training-free conflict detectors read it).
    """
    outputs: list[str] = []
    bar = tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress, leave=False)
    for chunk in batches(prompts, batch_size):
        enc = tokenize(lm, chunk)
        prompt_len = enc["input_ids"].shape[1]
        stopping = StoppingCriteriaList([_NewlineStop(lm.tokenizer, prompt_len)]) if stop_at_newline else None
        processors = logits_processor
        if first_step is not None:
            processors = LogitsProcessorList([*(logits_processor or []), _FirstStep(first_step)])
        generated = greedy_call(lm, enc, max_new_tokens, processors, stopping)
        texts = lm.tokenizer.batch_decode(generated[:, prompt_len:], skip_special_tokens=True)
        outputs.extend(t.split("\n", 1)[0].strip() if stop_at_newline else t for t in texts)
        bar.update(len(chunk))
    bar.close()
    return outputs


class _FirstStep(LogitsProcessor):
    """Appends the log-softmax of the first decoding step's scores to ``into``; changes nothing."""

    def __init__(self, into: list[torch.Tensor]):
        self.into, self.seen = into, False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.seen:
            self.into.append(torch.log_softmax(scores.float(), -1).cpu())
            self.seen = True
        return scores


class _ForcedAnswerScorer(LogitsProcessor):
    """Records log p(gold token) at each step from the final scores, then forces the gold token.

    Placed last in the processor list, it scores exactly what decoding-level methods
    (CAD, DoLa) would sample from, and teacher-forces the answer for the next step.
    """

    def __init__(self, gold: torch.Tensor):
        self.gold = gold  # [batch, steps], -1 past a row's answer
        self.step = 0
        self.log_probs = torch.zeros(gold.shape, dtype=torch.float64)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        gold = self.gold[:, self.step].to(scores.device)
        valid = gold >= 0
        log_probs = torch.log_softmax(scores.float(), dim=-1)
        picked = log_probs.gather(1, gold.clamp(min=0)[:, None])[:, 0]
        self.log_probs[:, self.step] = torch.where(valid, picked, torch.zeros_like(picked)).double().cpu()
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, gold.clamp(min=0)[:, None], 0.0)
        self.step += 1
        return forced


@torch.inference_mode()
def answer_nll(lm: LoadedModel, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 8,
               logits_processor: LogitsProcessorList | None = None) -> list[float]:
    """Mean negative log-likelihood per token of each gold ``answer`` after its prompt (teacher-forced).

    Runs through ``generate`` so steering hooks and logits processors act exactly as when
    answering; the answer is tokenized with a leading space, as the model writes it after ``answer:``.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    out: list[float] = []
    for chunk in batches(list(range(len(prompts))), batch_size):
        ids = [lm.tokenizer(" " + answers[i].strip(), add_special_tokens=False)["input_ids"] or [0] for i in chunk]
        steps = max(len(x) for x in ids)
        gold = torch.tensor([x + [-1] * (steps - len(x)) for x in ids])
        scorer = _ForcedAnswerScorer(gold)
        enc = tokenize(lm, [prompts[i] for i in chunk])
        greedy_call(lm, enc, steps, LogitsProcessorList([*(logits_processor or []), scorer]))
        lengths = (gold >= 0).sum(1).double()
        out.extend((-scorer.log_probs.sum(1) / lengths).tolist())
    return out
