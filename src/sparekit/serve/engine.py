"""The model side of the server: one batched greedy ``generate`` for many requests.

Each row of a batch has its own prompt, ``max_tokens``, stop strings, detection flag
and steering (method, direction, strength, gate, or none). Rows share the forward
passes: each row's residual edits are declared on the shared :class:`~sparekit.hooks.Hooks`
scoped to its rows (:func:`sparekit.steering.base.edit_rows`), and the conflict/source probes read the last prompt token from captures on the same
prompt pass that starts generation. The one exception is a steered row that also
asks for detection or a gate while the steering edits a layer at or below a probe's
layer: its probe reading must describe the *unsteered* prompt (as ``sparekit steer``
does), so those rows, and only those, get one batched forward stopped at the probe layer first.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from sparekit.activations.last_token import last_token_states
from sparekit.data.formats import DEFAULT_FORMAT, Passages, PromptBuilder, PromptFormat, Shot, prompt_format
from sparekit.errors import SparekitError
from sparekit.evaluation.generation import greedy_call, tokenize
from sparekit.hooks import Hooks, Site
from sparekit.kv import L2Press
from sparekit.models.assets import assets_for
from sparekit.models.loading import LoadedModel
from sparekit.models.placement import input_device
from sparekit.probes.detect import probes_for, request_shots
from sparekit.probes.reading import ProbeSet, capture_reading_sites, read_captures, read_states
from sparekit.serve.options import Capabilities, RowSteer
from sparekit.serve.prefix import PrefixCache, prefixed_batch
from sparekit.steering.base import EditFn, Gate, SteeringMethod, edit_rows
from sparekit.steering.fitted import FittedBundle, FittedSteering

log = logging.getLogger(__name__)

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


@dataclass
class Steering:
    """What the server can steer with: fitted methods per direction, and their gate if any."""

    methods: dict[str, dict[str, FittedSteering]]
    gates: dict[str, Gate]


def servable(method: SteeringMethod) -> bool:
    """Whether rows can mix this method in one batch: it steers by residual edits only."""
    cls = type(method)
    return cls.rewrite is SteeringMethod.rewrite and cls.logits_processor is SteeringMethod.logits_processor


class _Rows(StoppingCriteria):
    """Per-row bookkeeping at every decoding step: text so far, stop strings, limits, cancellation.

    ``generate`` calls it with the sequences including each step's new token; a row
    it reports finished stops counting (and the whole call ends once all are).
    """

    def __init__(self, engine: Engine, jobs: Sequence[Job], prompt_len: int, on_first_step: Callable[[], None]):
        self.engine, self.jobs, self.prompt_len = engine, jobs, prompt_len
        self.on_first_step = on_first_step
        self.done = [False] * len(jobs)
        self.sent = [0] * len(jobs)  # characters already streamed
        self.results: list[dict | None] = [None] * len(jobs)
        self.hold = max((len(s) for j in jobs for s in j.stop), default=1) - 1  # a stop string may be arriving

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        if input_ids.shape[1] == self.prompt_len + 1:
            self.on_first_step()
        for row, job in enumerate(self.jobs):
            if not self.done[row]:
                self._step(row, job, input_ids[row, self.prompt_len:].tolist())
        return torch.tensor(self.done, device=input_ids.device)

    def _step(self, row: int, job: Job, ids: list[int]) -> None:
        reason = None
        if ids[-1] in self.engine.eos_ids:
            ids, reason = ids[:-1], "stop"
        text = self.engine.lm.tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in job.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        if reason is None and len(ids) >= job.max_tokens:
            reason = "length"
        if job.cancelled.is_set():
            reason = "cancelled"
        if job.stream and reason != "cancelled":
            safe = len(text) if reason else len(text) - self.hold
            while safe > self.sent[row] and text[safe - 1] == "\ufffd":  # half of a multi-byte character
                safe -= 1
            if safe > self.sent[row]:
                job.emit("delta", text[self.sent[row]:safe])
                self.sent[row] = safe
        if reason is not None:
            self.done[row] = True
            self.results[row] = {"text": text, "finish_reason": reason, "completion_tokens": len(ids)}


class _RowSampler(LogitsProcessor):
    """Each row's own penalties, bias and seeded sampling inside one greedy ``generate``.

    A sampled row's logits become 0 at the drawn token and -inf elsewhere, so the greedy
    step picks it; rows at temperature 0 without penalties pass through untouched (their
    answers stay identical to a greedy batch). Each row draws from its own generator
    (seeded by the request's ``seed``), so a seeded answer does not depend on its batch.
    """

    def __init__(self, jobs: Sequence[Job], prompt_len: int):
        self.jobs, self.prompt_len = jobs, prompt_len
        self.generators = [_generator(job.sampling.seed) for job in jobs]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        for row, job in enumerate(self.jobs):
            s = job.sampling
            if s.adjusts_logits:
                scores[row] = self._row(scores[row].float(), input_ids[row, self.prompt_len:], s, row)
        return scores

    def _row(self, logits: torch.Tensor, generated: torch.Tensor, s: Sampling, row: int) -> torch.Tensor:
        if s.frequency_penalty or s.presence_penalty:
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
        token = torch.multinomial(probs.cpu(), 1, generator=self.generators[row]).item()
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


class Engine:
    """Runs batches of :class:`Job` on one model; not thread-safe (one batcher thread calls it)."""

    def __init__(self, lm: LoadedModel, probes: ProbeSet | None = None,
                 steering: Steering | None = None, shots: Sequence[Shot] = (), kv_ratio: float = 0.0,
                 prefix_cache: bool = True):
        self.lm = lm
        self.press = L2Press(ratio=kv_ratio) if kv_ratio else None  # a bad ratio fails now, not at the first request
        if self.press:
            self.press.check(lm.model, lm.info)
        # KV compression prunes each prompt's own cache after its prompt pass: no prefix to share then
        self.prefixes = PrefixCache(lm) if prefix_cache and not kv_ratio else None
        self.probes = probes
        self.steering = steering or Steering({}, {})
        for label, per_direction in self.steering.methods.items():
            for fitted in per_direction.values():
                if not servable(fitted.method):
                    raise SparekitError(f"method {label!r} ({fitted.method.kind}) cannot be served",
                                        "the server mixes rows in one batch, which needs residual-edit methods")
        self.shots = tuple(shots)
        eos = lm.model.generation_config.eos_token_id
        self.eos_ids = {*(eos if isinstance(eos, list) else [eos] if eos is not None else []),
                        *([lm.tokenizer.eos_token_id] if lm.tokenizer.eos_token_id is not None else [])}
        self._edit_cache: dict[tuple[str, str, float], list[tuple[Site, EditFn]]] = {}
        # The HTTP thread counts prompt tokens with its own copy: a fast tokenizer keeps its padding
        # setting on one shared object, so a count during a batch's padded encoding would break it.
        self._counter = copy.deepcopy(lm.tokenizer)

    # -- what requests may ask for --------------------------------------------------
    @property
    def can_detect(self) -> bool:
        return self.probes is not None

    def method_names(self) -> list[str]:
        return ["none", *sorted(self.steering.methods)]

    def default_strength(self, label: str, toward: str) -> float:
        fitted = self.steering.methods[label][toward]
        strength = fitted.strength if fitted.strength is not None else fitted.method.default_strength
        return float(strength or 0.0)

    def capabilities(self, max_strength: float) -> Capabilities:
        """What requests may ask of this engine (:func:`sparekit.serve.options.parse_options` checks against it)."""
        return Capabilities({label: {t: self.default_strength(label, t) for t in per}
                             for label, per in self.steering.methods.items()},
                            frozenset(self.steering.gates), self.can_detect, max_strength)

    def count_tokens(self, text: str) -> int:
        return len(self._counter(text)["input_ids"])

    def answer_prompt(self, context: Passages, question: str, fmt: str | PromptFormat = DEFAULT_FORMAT) -> str:
        """``/v1/answer``'s prompt, built as every command builds it (the request-time demonstrations)."""
        return PromptBuilder(prompt_format(fmt, self.lm.tokenizer), self.shots)(question, context)

    # -- one batch ---------------------------------------------------------------------
    def run(self, jobs: Sequence[Job]) -> None:
        """Complete every job; each receives its events through ``job.emit``."""
        try:
            self._run(jobs)
        except Exception as exc:  # a bug or an out-of-memory: every row learns, the server lives on
            log.exception("batch of %d failed", len(jobs))
            for job in jobs:
                job.emit("error", f"generation failed: {type(exc).__name__}")

    @torch.inference_mode()
    def _run(self, jobs: Sequence[Job]) -> None:
        texts = [job.prompt for job in jobs]
        fired = [job.steer is not None for job in jobs]
        readings: list[dict | None] = [None] * len(jobs)
        early = [i for i, job in enumerate(jobs) if self._reads_before_steering(job)]
        if early:  # steered rows whose probe/gate reading must come from the unsteered prompt
            states = last_token_states(self.lm, [texts[i] for i in early], self._sites_for([jobs[i] for i in early]))
            early_readings = read_states(states, probes=self.probes if any(jobs[i].detect for i in early)
                                         else None).probes
            for k, i in enumerate(early):
                if jobs[i].steer.gate:
                    gate = self.steering.gates[jobs[i].steer.method]
                    fired[i] = bool(read_states({gate.site: states[gate.site][k:k + 1]}, gate).fired[0])
                if jobs[i].detect:
                    readings[i] = early_readings[k]

        hooks = edit_rows(Hooks(self.lm), [self._edits(job.steer) if fire else None for job, fire in zip(jobs, fired)])
        late = [i for i, job in enumerate(jobs) if job.detect and readings[i] is None]
        if late:
            capture_reading_sites(hooks, probes=self.probes)

        def first_step() -> None:  # the prompt pass has run: its captures hold the readings
            if late:
                late_readings = read_captures(hooks, probes=self.probes).probes
                for i in late:
                    readings[i] = late_readings[i]
            for i, job in enumerate(jobs):
                job.emit("sparekit", self._sparekit(job, readings[i], fired[i]))

        enc, cache = self._encode(texts)
        rows = _Rows(self, jobs, enc["input_ids"].shape[1], first_step)
        sampler = (LogitsProcessorList([_RowSampler(jobs, enc["input_ids"].shape[1])])
                   if any(job.sampling.adjusts_logits for job in jobs) else None)
        with self._kv_compression(), hooks:
            greedy_call(self.lm, enc, max(job.max_tokens for job in jobs), sampler, StoppingCriteriaList([rows]),
                        cache)
        for i, job in enumerate(jobs):
            result = rows.results[i] or {"text": "", "finish_reason": "length", "completion_tokens": 0}
            job.emit("done", {**result, "prompt_tokens": int(enc["attention_mask"][i].sum()),
                              "sparekit": self._sparekit(job, readings[i], fired[i])})

    # -- helpers -----------------------------------------------------------------------
    def _encode(self, texts: Sequence[str]) -> tuple[dict[str, torch.Tensor], Any]:
        """The batch's inputs, and the KV of a shared prompt prefix when one is kept (else ``None``).

        Tokenized once, by :func:`tokenize` (which refuses a batch the model or the memory cannot take);
        a kept prefix only lays the same token ids out again.
        """
        enc = tokenize(self.lm, texts)
        if self.prefixes is not None:
            rows = [ids[mask.bool()].tolist() for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
            length, cache = self.prefixes.lookup(rows)
            if cache is not None:
                return prefixed_batch(rows, length, self.lm.tokenizer.pad_token_id, input_device(self.lm)), cache
        return enc, None

    def _kv_compression(self) -> contextlib.AbstractContextManager:
        """``--kv-compress``: prune each prompt's KV cache by key norm after the prompt pass (sparekit.kv)."""
        return self.press(self.lm) if self.press else contextlib.nullcontext()

    def _reads_before_steering(self, job: Job) -> bool:
        """A gate decides before the edits; detection reads the unsteered prompt (edits below the probe change it)."""
        if job.steer is None:
            return False
        if job.steer.gate:
            return True
        return job.detect and min(s.layer for s, _ in self._edits(job.steer)) <= max(self.probes.sites.values()).layer

    def _sites_for(self, jobs: Sequence[Job]) -> list[Site]:
        sites = {s for job in jobs if job.detect for s in self.probes.sites.values()}
        sites |= {self.steering.gates[job.steer.method].site for job in jobs if job.steer and job.steer.gate}
        return sorted(sites)

    def _edits(self, steer: RowSteer) -> list[tuple[Site, EditFn]]:
        """The method's edits for (label, direction, strength), built once and reused across batches."""
        key = (steer.method, steer.toward, steer.strength)
        if key not in self._edit_cache:
            if len(self._edit_cache) >= 64:
                self._edit_cache.pop(next(iter(self._edit_cache)))
            method = self.steering.methods[steer.method][steer.toward].method
            self._edit_cache[key] = method.edits(self.lm, steer.toward, steer.strength)  # type: ignore[arg-type]
        return self._edit_cache[key]

    @staticmethod
    def _sparekit(job: Job, reading: dict | None, fired: bool) -> dict:
        out: dict[str, Any] = dict(reading) if reading else {}
        if job.steer is None:
            out.update(steered=False, method="none")
        else:
            out.update(steered=fired, method=job.steer.method, toward=job.steer.toward, strength=job.steer.strength,
                       gate=job.steer.gate)
        return out


def load_steering(lm: LoadedModel, fitted_roots: Sequence[Path]) -> Steering:
    """Fitted bundles (:class:`~sparekit.steering.fitted.FittedBundle`) by folder name, and their gates;
    without any, those shipped for the model. A method without a gate refuses ``gate=true`` with a 400."""
    roots = list(fitted_roots)
    shipped = assets_for(lm.info)
    if not roots and shipped is not None:
        roots = [shipped.steering(label) for label in shipped.steering_labels()]
    bundles = {root.name: FittedBundle.load(root, lm.info.model_hash) for root in roots}
    return Steering({label: dict(b.directions) for label, b in bundles.items()},
                    {label: b.gate for label, b in bundles.items() if b.gate is not None})


def build_engine(lm: LoadedModel, probe_dir: Path | None = None, fitted: Sequence[Path] = (),
                 kv_ratio: float = 0.0, prefix_cache: bool = True) -> Engine:
    """What ``sparekit serve`` runs: probes (explicit, else the shipped ones, else none), fitted methods,
    and the request-time demonstrations of ``/v1/answer`` prompts (:func:`~sparekit.probes.detect.request_shots`).
    """

    probes = probes_for(lm, probe_dir)
    shots = request_shots(None if probes is None else probes.folder)
    return Engine(lm, probes, load_steering(lm, fitted), shots, kv_ratio, prefix_cache)
