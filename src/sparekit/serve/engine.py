"""The model side of the server: one batched greedy ``generate`` for many requests.

Each row of a batch has its own prompt, ``max_tokens``, stop strings, detection flag
and steering (method, direction, strength, gate, or none). Rows share the forward
passes: the per-row residual edits are composed into one edit per site
(:func:`sparekit.steering.base.row_edits`) on the shared :class:`~sparekit.hooks.Hooks`,
and the conflict/source probes read the last prompt token from captures on the same
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
from transformers import StoppingCriteria, StoppingCriteriaList

from sparekit.activations.last_token import last_token_states
from sparekit.errors import SparekitError
from sparekit.evaluation.generation import greedy_call, tokenize
from sparekit.hooks import Hooks, Site
from sparekit.kv import L2Press
from sparekit.models.loading import LoadedModel
from sparekit.probes.linear import LinearProbe
from sparekit.steering.base import DIRECTIONS, EditFn, Gate, SteeringMethod, row_edits
from sparekit.steering.fitted import FittedSteering
from sparekit.utils.arrays import to_numpy

log = logging.getLogger(__name__)

#: ``emit(kind, payload)``: ``"sparekit"`` (the probe readings, once the prompt pass ran),
#: ``"delta"`` (new text, streaming rows only), ``"done"`` (the row's result) or ``"error"``.
Emit = Callable[[str, Any], None]


@dataclass(frozen=True)
class RowSteer:
    """A validated steering request: a fitted method's label, direction, strength and gate flag."""

    label: str
    toward: str
    strength: float
    gate: bool = False


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


class Engine:
    """Runs batches of :class:`Job` on one model; not thread-safe (one batcher thread calls it)."""

    def __init__(self, lm: LoadedModel, probes: dict[str, LinearProbe] | None = None,
                 steering: Steering | None = None, demos: Sequence[str] = (), kv_ratio: float = 0.0):
        self.lm = lm
        self.press = L2Press(ratio=kv_ratio) if kv_ratio else None  # a bad ratio fails now, not at the first request
        if self.press:
            self.press.check(lm.model, lm.info)
        self.probes = probes or {}
        self.probe_sites = {target: Site.parse(p.site) for target, p in self.probes.items()}
        self.steering = steering or Steering({}, {})
        for label, per_direction in self.steering.methods.items():
            for fitted in per_direction.values():
                if not servable(fitted.method):
                    raise SparekitError(f"method {label!r} ({fitted.method.kind}) cannot be served",
                                        "the server mixes rows in one batch, which needs residual-edit methods")
        self.demos = tuple(demos)
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
        return "conflict" in self.probes

    def method_names(self) -> list[str]:
        return ["none", *sorted(self.steering.methods)]

    def default_strength(self, label: str, toward: str) -> float:
        fitted = self.steering.methods[label][toward]
        strength = fitted.strength if fitted.strength is not None else fitted.method.default_strength
        return float(strength or 0.0)

    def count_tokens(self, text: str) -> int:
        return len(self._counter(text)["input_ids"])

    def answer_prompt(self, context: str | None, question: str, k_shot: int = 3) -> str:
        """The project's prompt format: fitted demonstrations (other questions) then the item."""
        from sparekit.data.prompts import demos_for, format_block

        return "".join(demos_for(question, self.demos, k_shot)) + format_block(question, context)

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
            for k, i in enumerate(early):
                row = {site: h[k:k + 1] for site, h in states.items()}
                if jobs[i].steer.gate:
                    gate = self.steering.gates[jobs[i].steer.label]
                    fired[i] = bool(gate.fire(row[gate.site])[0])
                if jobs[i].detect:
                    readings[i] = self._read(row, 0)

        hooks = Hooks(self.lm)
        per_row = [self._edits(job.steer) if fire else None for job, fire in zip(jobs, fired)]
        for site, fn in row_edits(per_row):
            hooks.edit(site, fn, positions="last", when="prompt")
        late = [i for i, job in enumerate(jobs) if job.detect and readings[i] is None]
        if late:
            for site in set(self.probe_sites.values()):
                hooks.capture(site, dtype=torch.float32)

        def first_step() -> None:  # the prompt pass has run: its captures hold the readings
            for i in late:
                readings[i] = self._read({s: hooks[s] for s in set(self.probe_sites.values())}, i)
            for i, job in enumerate(jobs):
                job.emit("sparekit", self._sparekit(job, readings[i], fired[i]))

        enc = tokenize(self.lm, texts)
        rows = _Rows(self, jobs, enc["input_ids"].shape[1], first_step)
        with self._kv_compression(), hooks:
            greedy_call(self.lm, enc, max(job.max_tokens for job in jobs), None, StoppingCriteriaList([rows]))
        for i, job in enumerate(jobs):
            result = rows.results[i] or {"text": "", "finish_reason": "length", "completion_tokens": 0}
            job.emit("done", {**result, "prompt_tokens": int(enc["attention_mask"][i].sum()),
                              "sparekit": self._sparekit(job, readings[i], fired[i])})

    # -- helpers -----------------------------------------------------------------------
    def _kv_compression(self) -> contextlib.AbstractContextManager:
        """``--kv-compress``: prune each prompt's KV cache by key norm after the prompt pass (sparekit.kv)."""
        return self.press(self.lm) if self.press else contextlib.nullcontext()

    def _reads_before_steering(self, job: Job) -> bool:
        """A gate decides before the edits; detection reads the unsteered prompt (edits below the probe change it)."""
        if job.steer is None:
            return False
        if job.steer.gate:
            return True
        return job.detect and min(s.layer for s, _ in self._edits(job.steer)) <= max(self.probe_sites.values()).layer

    def _sites_for(self, jobs: Sequence[Job]) -> list[Site]:
        sites = {s for job in jobs if job.detect for s in self.probe_sites.values()}
        sites |= {self.steering.gates[job.steer.label].site for job in jobs if job.steer and job.steer.gate}
        return sorted(sites)

    def _edits(self, steer: RowSteer) -> list[tuple[Site, EditFn]]:
        """The method's edits for (label, direction, strength), built once and reused across batches."""
        key = (steer.label, steer.toward, steer.strength)
        if key not in self._edit_cache:
            if len(self._edit_cache) >= 64:
                self._edit_cache.pop(next(iter(self._edit_cache)))
            method = self.steering.methods[steer.label][steer.toward].method
            self._edit_cache[key] = method.edits(self.lm, steer.toward, steer.strength)  # type: ignore[arg-type]
        return self._edit_cache[key]

    def _read(self, states: dict[Site, torch.Tensor], row: int) -> dict:
        def proba(target: str) -> float:
            site = self.probe_sites[target]
            return float(self.probes[target].predict_proba(to_numpy(states[site][row:row + 1].float()))[0, 1])

        p_context = proba("source") if "source" in self.probes else None
        return {"conflict_probability": proba("conflict"), "context_probability": p_context,
                "predicted_source": None if p_context is None else DIRECTIONS[0] if p_context > 0.5 else DIRECTIONS[1]}

    @staticmethod
    def _sparekit(job: Job, reading: dict | None, fired: bool) -> dict:
        out: dict[str, Any] = dict(reading) if reading else {}
        if job.steer is None:
            out.update(steered=False, method="none")
        else:
            out.update(steered=fired, method=job.steer.label, toward=job.steer.toward, strength=job.steer.strength,
                       gate=job.steer.gate)
        return out


def load_steering(lm: LoadedModel, fitted_roots: Sequence[Path]) -> Steering:
    """Fitted methods (``<root>/{context,memory}``) and their gates; without any, those shipped for the model."""
    from sparekit.models.assets import assets_for
    from sparekit.steering.fitted import load_fitted, load_gate

    roots = list(fitted_roots)
    shipped = assets_for(lm.info)
    if not roots and shipped is not None:
        roots = [shipped.steering(label) for label in shipped.steering_labels()]
    methods: dict[str, dict[str, FittedSteering]] = {}
    gates: dict[str, Gate] = {}
    for root in roots:
        label = root.name
        methods[label] = {t: load_fitted(root, t, lm.info) for t in DIRECTIONS if (root / t).is_dir()}  # type: ignore
        if not methods[label]:
            raise SparekitError(f"no fitted method in {root}",
                                "pass a folder from `sparekit bench steer` (<run>/fitted/<method>)")
        try:
            gates[label] = load_gate(root, lm.info)
        except SparekitError:
            pass  # gate=true is then refused for this method with a clear 422
    return Steering(methods, gates)


def build_engine(lm: LoadedModel, probe_dir: Path | None = None, fitted: Sequence[Path] = (),
                 kv_ratio: float = 0.0) -> Engine:
    """What ``sparekit serve`` runs: probes (explicit, else the shipped ones, else none), fitted methods.

    ``/v1/answer`` prompts get the fitted method's demonstrations, as ``sparekit steer`` uses,
    or else the probes' (the prompts they were fitted on).
    """
    from sparekit.probes.detect import detection_demos, load_probes, resolve_probe_dir

    try:
        folder: Path | None = resolve_probe_dir(probe_dir, lm.info)
        probes = load_probes(folder, lm.info.model_hash)
    except SparekitError:
        if probe_dir is not None:
            raise
        folder, probes = None, {}
    steering = load_steering(lm, fitted)
    demos = next((f.demos for per in steering.methods.values() for f in per.values()), None)
    if demos is None:
        demos = tuple(detection_demos(folder)) if folder is not None else ()
    return Engine(lm, probes, steering, demos, kv_ratio)
