"""The server's rows: what a request asks (:class:`Job`, :class:`Sampling`), its decoding state (:class:`Row`),
and the rows decoding together with their KV cache (:class:`Batch`).

Continuous batching works on a :class:`Batch`: a row leaves it the step it finishes (stop string, EOS,
``max_tokens``, cancellation) and its rows are taken out of the KV cache and the attention mask
(:meth:`Batch.keep`); rows whose prompt pass just ran join a running batch (:meth:`Batch.join`): the narrower
of the two is left-padded with masked columns so that the newest columns line up; columns no row attends to
any more are dropped at the front (:meth:`Batch.trim`). Keys are cached with their rotary position applied and
each row's position ids come from its own mask, so masked columns change the widths and nothing else.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Cache

from sparekit.serve.options import RowSteer

#: ``emit(kind, payload)``: ``"sparekit"`` (the probe readings, once the prompt pass ran),
#: ``"delta"`` (new text, streaming rows only), ``"done"`` (the row's result) or ``"error"``.
Emit = Callable[[str, Any], None]


@dataclass(frozen=True)
class Sampling:
    """A request's decoding: greedy at temperature 0 (the default), else seeded sampling per row."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)

    @property
    def adjusts_logits(self) -> bool:
        return bool(self.temperature or self.frequency_penalty or self.presence_penalty or self.logit_bias)


GREEDY = Sampling()


@dataclass
class Job:
    """One prompt to complete; filled by the HTTP side, run by the batcher thread."""

    prompt: str
    max_tokens: int
    emit: Emit
    stop: tuple[str, ...] = ()
    detect: bool = False
    steer: RowSteer | None = None
    stream: bool = False
    sampling: Sampling = GREEDY
    arrived: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: the detector ``detect`` reads with; one other than the probe also needs the prompt's closed-book twin and
    #: its question (:func:`sparekit.probes.training_free.detect_conflict`)
    detector: str = "probe"
    closed_book: str | None = None
    question: str | None = None

    @property
    def reads_probes(self) -> bool:
        """Whether the prompt pass reads this row's probes (detection by the probe alone)."""
        return self.detect and self.detector == "probe"


@dataclass
class Row:
    """One job's decoding: the tokens so far, the characters already streamed, its own random generator.

    ``sparekit`` is the response's ``sparekit`` object (readings, steering), fixed by the prompt pass.
    """

    job: Job
    prompt_tokens: int
    sparekit: dict
    generated: list[int] = field(default_factory=list)
    sent: int = 0
    result: dict | None = None

    def __post_init__(self) -> None:
        self.hold = max((len(s) for s in self.job.stop), default=1) - 1  # a stop string may be arriving
        self.generator = _generator(self.job.sampling.seed) if self.job.sampling.temperature else None

    def take(self, token: int, decode: Callable[[list[int]], str], eos_ids: set[int]) -> bool:
        """Add the step's token: stream what is safe to send; ``True`` (and :attr:`result` set) once finished."""
        self.generated.append(token)
        ids, reason = self.generated, None
        if token in eos_ids:
            ids, reason = ids[:-1], "stop"
        text = decode(ids)
        cut = min((i for i in (text.find(s) for s in self.job.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        if reason is None and len(ids) >= self.job.max_tokens:
            reason = "length"
        if self.job.cancelled.is_set():
            reason = "cancelled"
        if self.job.stream and reason != "cancelled":
            self._stream(text, final=reason is not None)
        if reason is not None:
            self.result = {"text": text, "finish_reason": reason, "completion_tokens": len(ids)}
        return reason is not None

    def _stream(self, text: str, final: bool) -> None:
        safe = len(text) if final else len(text) - self.hold
        while safe > self.sent and text[safe - 1] == "\ufffd":  # half of a multi-byte character
            safe -= 1
        if safe > self.sent:
            self.job.emit("delta", text[self.sent:safe])
            self.sent = safe

    def adjust(self, logits: torch.Tensor) -> torch.Tensor:
        """The row's penalties, bias and seeded draw on its float32 logits ``[vocab]``.

        A sampled row's logits become 0 at the drawn token and -inf elsewhere, so the batch's argmax
        picks it; each row draws from its own generator, so a seeded answer does not depend on its batch.
        """
        s = self.job.sampling
        if s.frequency_penalty or s.presence_penalty:
            generated = torch.tensor(self.generated, dtype=torch.long)
            counts = torch.bincount(generated, minlength=logits.numel())[:logits.numel()].to(logits)
            logits = logits - s.frequency_penalty * counts - s.presence_penalty * (counts > 0).to(logits)
        for token, bias in s.logit_bias.items():
            logits[token] += bias
        if s.temperature == 0:
            return logits
        probs = torch.softmax(logits / s.temperature, dim=-1)
        if s.top_p < 1:  # nucleus: the smallest set of tokens whose mass reaches top_p
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs >= s.top_p
            probs[order[outside]] = 0
        token = torch.multinomial(probs.cpu(), 1, generator=self.generator).item()
        out = torch.full_like(logits, float("-inf"))
        out[token] = 0.0
        return out


def _generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _layers(cache: Cache) -> list:
    """The cache layers that hold keys (a layer sharing another's KV holds none)."""
    return [layer for layer in cache.layers if getattr(layer, "keys", None) is not None and layer.keys.numel()]


@dataclass
class Batch:
    """Rows decoding together: their KV cache, their 2-D attention mask ``[rows, columns]`` (1 where a row
    attends) and the float32 logits of each row's next token ``[rows, vocab]``."""

    rows: list[Row]
    cache: Cache
    mask: torch.Tensor
    logits: torch.Tensor

    def choose(self) -> torch.Tensor:
        """Each row's next token ``[rows]``: the argmax, after the rows' own sampling (greedy rows untouched)."""
        logits = self.logits
        adjusted = [i for i, row in enumerate(self.rows) if row.job.sampling.adjusts_logits]
        if adjusted:
            logits = logits.clone()
            for i in adjusted:
                logits[i] = self.rows[i].adjust(logits[i])
        return logits.argmax(-1)

    def aligned(self) -> bool:
        """Whether every cache layer holds one column per mask column (a sliding-window layer that dropped
        its oldest columns does not: then columns are neither padded nor trimmed)."""
        return all(layer.keys.shape[-2] == self.mask.shape[1] for layer in _layers(self.cache))

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (indices, in order): in the row list, the cache, the mask and the logits."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.rows = [self.rows[i] for i in rows]
        self.cache.batch_select_indices(index)
        self.mask, self.logits = self.mask[index], self.logits[index]

    def trim(self) -> None:
        """Drop the leading columns no row attends to (rows that left, a joined batch's padding)."""
        if not self.rows or not self.aligned():
            return
        drop = int(self.mask.any(0).int().argmax())
        if drop:
            self._resize(-drop)

    def join(self, other: Batch) -> None:
        """Append ``other``'s rows (both aligned): the narrower batch is left-padded with masked columns."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for batch in (self, other):
            batch._resize(width - batch.mask.shape[1])
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache)):
            mine.keys, mine.values = torch.cat([mine.keys, theirs.keys]), torch.cat([mine.values, theirs.values])
        self.rows += other.rows
        self.mask, self.logits = torch.cat([self.mask, other.mask]), torch.cat([self.logits, other.logits])

    def _resize(self, columns: int) -> None:
        """Add ``columns`` masked columns at the front (or drop ``-columns`` of them)."""
        if not columns:
            return
        for layer in _layers(self.cache):
            layer.keys, layer.values = (_front(t, columns, dim=-2) for t in (layer.keys, layer.values))
            if hasattr(layer, "cumulative_length"):  # a sliding-window layer counts the columns it has seen
                layer.cumulative_length += columns
        self.mask = _front(self.mask, columns, dim=1)


def _front(tensor: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    """``tensor`` with ``columns`` zeros added before its first column along ``dim`` (or that many removed)."""
    if columns < 0:
        return tensor.narrow(dim, -columns, tensor.shape[dim] + columns)
    shape = list(tensor.shape)
    shape[dim] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
