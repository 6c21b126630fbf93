"""The model side of the server: batches of requests decoded together, with continuous batching.

Each row of a batch has its own prompt, ``max_tokens``, stop strings, detection flag
and steering (method, direction, strength, gate, or none). A batch starts with one prompt pass:
each row's residual edits are declared on the shared :class:`~sparekit.hooks.Hooks` scoped to its rows
(:func:`sparekit.steering.base.edit_rows`), and the conflict/source probes read the last prompt token from
captures on the same pass. The one exception is a steered row that also asks for detection or a gate while
the steering edits a layer at or below a probe's layer: its probe reading must describe the *unsteered*
prompt (as ``sparekit steer`` does), so those rows, and only those, get one batched forward stopped at the
probe layer first. A row that asks for another detector (``"detect": "recall"``) is read before the batch, as
``sparekit detect --detector`` reads it, and so is a row a recall gate decides (``"gate": "recall"``, or a method
whose own gate is one), as ``sparekit steer --gate`` decides (:meth:`Engine._read_apart`).

Decoding is a loop of our own rather than ``generate``: a row leaves the batch the step it finishes, and
(``batching="continuous"``) requests that arrived meanwhile run their prompt pass and join the batch at the next
step (:mod:`sparekit.serve.rows`). Answers are those of a ``generate`` call on the same batch: the same inputs,
position ids and greedy choice per step (tests/test_serve.py compares them with :func:`greedy_generate`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from sparekit.activations.last_token import last_token_states
from sparekit.data.formats import DEFAULT_FORMAT, Passages, PromptBuilder, PromptFormat, Shot, prompt_format
from sparekit.errors import SparekitError
from sparekit.evaluation.generation import tokenize
from sparekit.hooks import Hooks, Site
from sparekit.hooks.core import mark_prompt_start
from sparekit.kv import L2Press
from sparekit.models.assets import assets_for
from sparekit.models.loading import LoadedModel
from sparekit.models.placement import input_device
from sparekit.probes.detect import probes_for, request_shots
from sparekit.probes.detectors import DETECTORS, needs_probes, saved_combinations
from sparekit.probes.reading import ProbeSet, capture_reading_sites, read_captures, read_states
from sparekit.serve.options import Capabilities, RowSteer
from sparekit.serve.prefix import PrefixCache, cached_forward, prefixed_batch
from sparekit.serve.rows import GREEDY, Batch, Emit, Job, Row, Sampling
from sparekit.steering.base import REGISTRY, EditFn, Gate, SteeringMethod, edit_rows
from sparekit.steering.fitted import FittedBundle, FittedSteering
from sparekit.steering.gate import training_free_gate

__all__ = ["GREEDY", "Batching", "Emit", "Engine", "Job", "Sampling", "Steering", "build_engine", "load_steering"]

log = logging.getLogger(__name__)

#: how the engine batches: ``retire`` (the default: rows leave the batch the step they finish), ``continuous``
#: (they leave, and waiting requests join the running batch: slower than ``retire`` on a 2-core CPU, where a
#: joining prompt pass stalls every running row; BENCHMARKS.md), ``static`` (every row keeps its place until the
#: batch's last one finishes, as ``generate`` runs a batch; ``--kv-compress`` runs so)
Batching = Literal["continuous", "retire", "static"]
#: ``join(running)``: jobs waiting now that may join a batch of ``running`` rows (none: ``[]``)
Join = Callable[[int], list[Job]]
#: ``on_step(rows)``: called at every decoding step with the rows it runs
OnStep = Callable[[int], None]


@dataclass
class Steering:
    """What the server can steer with: fitted methods per direction, and their gate if any."""

    methods: dict[str, dict[str, FittedSteering]]
    gates: dict[str, Gate]


def reads_prompt(gate: Gate) -> bool:
    """Whether the gate decides from the prompt itself (the recall gate's closed-book generation, through
    :meth:`~sparekit.steering.base.Gate.decide_texts`) rather than from a hidden state on the batch's prompt pass."""
    return type(gate).decide_texts is not Gate.decide_texts


@dataclass
class Apart:
    """What :meth:`Engine._read_apart` read before a batch, by row: other detectors' readings, prompt gates'
    decisions."""

    readings: dict[int, dict]
    fired: dict[int, bool]


def servable(method: SteeringMethod) -> bool:
    """Whether rows can mix this method in one batch: it steers by residual edits only."""
    return _edits_only(type(method))


def _edits_only(cls: type[SteeringMethod]) -> bool:
    return cls.rewrite is SteeringMethod.rewrite and cls.logits_processor is SteeringMethod.logits_processor


#: the registered method kinds the server can apply (the shipped CAD and AdaCAD bundles are for ``steer``)
SERVABLE_KINDS = frozenset(kind for kind, cls in REGISTRY.items() if _edits_only(cls))


class Engine:
    """Runs batches of :class:`Job` on one model; not thread-safe (one batcher thread calls it)."""

    def __init__(self, lm: LoadedModel, probes: ProbeSet | None = None,
                 steering: Steering | None = None, shots: Sequence[Shot] = (), kv_ratio: float = 0.0,
                 prefix_cache: bool = True, batching: Batching = "retire"):
        self.lm = lm
        self.press = L2Press(ratio=kv_ratio) if kv_ratio else None  # a bad ratio fails now, not at the first request
        if self.press:
            self.press.check(lm.model, lm.info)
        # KV compression prunes each prompt's own cache after its prompt pass: no prefix to share then, and its
        # per-row bookkeeping is the whole batch's, so the batch runs static
        self.prefixes = PrefixCache(lm) if prefix_cache and not kv_ratio else None
        self.batching: Batching = "static" if kv_ratio else batching
        self.window = getattr(lm.model.config, "sliding_window", None)
        self.probes = probes
        # the detectors other than the probe it runs: those that fit nothing, and the probe combinations fitted
        # beside its probes (read once here, not per request)
        fitted = saved_combinations(probes.folder) if probes is not None and probes.folder else {}
        self.detectors = frozenset(d for d in DETECTORS if not needs_probes(d) or d.removeprefix("probe+") in fitted)
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
        self._training_free_gates: dict[str, Gate] = {}
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
                            frozenset(self.steering.gates),
                            frozenset(label for label, gate in self.steering.gates.items() if reads_prompt(gate)),
                            self.can_detect, max_strength, self.detectors)

    def count_tokens(self, text: str) -> int:
        return len(self._counter(text)["input_ids"])

    def answer_prompt(self, context: Passages, question: str, fmt: str | PromptFormat = DEFAULT_FORMAT) -> str:
        """``/v1/answer``'s prompt, built as every command builds it (the request-time demonstrations)."""
        return self.answer_builder(fmt)(question, context)

    def answer_builder(self, fmt: str | PromptFormat = DEFAULT_FORMAT) -> PromptBuilder:
        """The request-time prompt builder in ``fmt`` (its closed-book twins are what the detectors contrast)."""
        return PromptBuilder(prompt_format(fmt, self.lm.tokenizer), self.shots)

    # -- one batch ---------------------------------------------------------------------
    def run(self, jobs: Sequence[Job], join: Join | None = None, on_step: OnStep | None = None) -> None:
        """Complete every job, and those ``join`` hands over while they run (continuous batching); each
        receives its events through ``job.emit``."""
        live = list(jobs)  # admitted and not answered yet
        try:
            with torch.inference_mode():
                apart = self._read_apart(jobs)  # uncompressed: a detector's own generations read as `detect` reads
                with self._kv_compression():
                    self._decode(self._prompt_pass(jobs, apart), live, join, on_step)
        except Exception as exc:  # a bug or an out-of-memory: every open row learns, the server lives on
            log.exception("batch of %d failed", len(live))
            for job in live:
                job.emit("error", f"generation failed: {type(exc).__name__}")

    def _decode(self, first: Batch, live: list[Job], join: Join | None, on_step: OnStep | None) -> None:
        """Step batches until every row is done; rows that ``join`` hands over join the running batch, or
        wait for it to finish when they cannot (a sliding attention window would be outgrown)."""
        batches = deque([first])
        while batches:
            running = batches[0]
            self._advance(running, live, on_step)
            if all(row.result is not None for row in running.rows):
                batches.popleft()
            if self.batching != "continuous" or join is None or len(batches) > 1:
                continue
            new = join(len(batches[0].rows) if batches else 0)
            if new:
                live.extend(new)
                group = self._prompt_pass(new, self._read_apart(new))
                if batches and self._joinable(batches[0], group):
                    batches[0].join(group)
                else:
                    batches.append(group)

    def _advance(self, batch: Batch, live: list[Job], on_step: OnStep | None) -> None:
        """One decoding step: each open row takes its token and finished rows answer (and leave the batch
        unless it runs static); then the open rows run one forward pass for the next step's logits."""
        tokens = batch.choose()
        for row, token in zip(batch.rows, tokens.tolist()):
            if row.result is None and row.take(token, self._decode_text, self.eos_ids):
                row.job.emit("done", {**row.result, "prompt_tokens": row.prompt_tokens, "sparekit": dict(row.sparekit)})
                live[:] = [job for job in live if job is not row.job]
        open_rows = [i for i, row in enumerate(batch.rows) if row.result is None]
        if not open_rows:
            return
        if self.batching == "static":  # finished rows keep their place and read padding, as in ``generate``
            tokens[[row.result is not None for row in batch.rows]] = self.lm.tokenizer.pad_token_id
        else:
            batch.keep(open_rows)
            batch.trim()
            tokens = tokens[open_rows]
        if on_step is not None:
            on_step(len(batch.rows))
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.rows), 1)], dim=1)
        positions = batch.mask.sum(-1, keepdim=True) - 1
        batch.cache, batch.logits = cached_forward(self.lm, tokens[:, None], batch.mask, positions, batch.cache)

    def _read_apart(self, jobs: Sequence[Job]) -> Apart:
        """Before the batch's pass, unsteered: the readings of rows whose detector is not the probe alone, each as
        ``sparekit detect --detector`` reads the prompt (its own closed-book generations or passes), and the
        decisions of rows a gate that reads the prompt decides, one batched generation per gate, as
        ``sparekit steer --gate`` decides."""
        from sparekit.probes.training_free import detect_conflict  # lazy: the module imports sparekit.steering

        readings = {i: detect_conflict(self.lm, job.prompt, job.detector, self.probes, job.closed_book, job.question)
                    for i, job in enumerate(jobs) if job.detect and not job.reads_probes}
        by_gate: dict[int, tuple[Gate, list[int]]] = {}
        for i, job in enumerate(jobs):
            gate = self._gate(job)
            if gate is not None and reads_prompt(gate):
                by_gate.setdefault(id(gate), (gate, []))[1].append(i)
        fired: dict[int, bool] = {}
        for gate, rows in by_gate.values():
            decided = gate.decide_texts(self.lm, [jobs[i].prompt for i in rows], [jobs[i].closed_book for i in rows],
                                        [jobs[i].question for i in rows])
            fired.update(zip(rows, map(bool, decided.tolist())))
        return Apart(readings, fired)

    def _prompt_pass(self, jobs: Sequence[Job], apart: Apart) -> Batch:
        """The jobs' prompt pass (suffix after a kept prefix): edits, readings, the first token's logits;
        ``apart``: what :meth:`_read_apart` read."""
        fired, readings = self._early_readings(jobs)
        for i, reading in apart.readings.items():
            readings[i] = reading
        for i, fire in apart.fired.items():
            fired[i] = fire
        hooks = edit_rows(Hooks(self.lm), [self._edits(job.steer) if fire else None for job, fire in zip(jobs, fired)])
        late = [i for i, job in enumerate(jobs) if job.reads_probes and readings[i] is None]
        if late:
            capture_reading_sites(hooks, probes=self.probes)
        enc, cache, start = self._encode([job.prompt for job in jobs])
        mask = enc["attention_mask"]
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as ``generate`` derives them
        with hooks:
            cache, logits = cached_forward(self.lm, enc["input_ids"][:, start:], mask, positions[:, start:], cache)
        mark_prompt_start(cache, 0)  # a reused prefix is consumed: from now on only an empty cache starts a prompt
        if late:
            late_readings = read_captures(hooks, probes=self.probes).probes
            for i in late:
                readings[i] = late_readings[i]
        rows = [Row(job, int(mask[i].sum()), self._sparekit(job, readings[i], fired[i])) for i, job in enumerate(jobs)]
        for row in rows:
            row.job.emit("sparekit", row.sparekit)
        return Batch(rows, cache, mask, logits)

    def _early_readings(self, jobs: Sequence[Job]) -> tuple[list[bool], list[dict | None]]:
        """Whether each row's steering fires, and the readings of the steered rows that must read the
        unsteered prompt (:meth:`_reads_before_steering`): one forward stopped at the deepest site they read."""
        fired = [job.steer is not None for job in jobs]
        readings: list[dict | None] = [None] * len(jobs)
        early = [i for i, job in enumerate(jobs) if self._reads_before_steering(job)]
        if not early:
            return fired, readings
        states = last_token_states(self.lm, [jobs[i].prompt for i in early], self._sites_for([jobs[i] for i in early]))
        early_readings = read_states(states, probes=self.probes if any(jobs[i].reads_probes for i in early)
                                     else None).probes
        for k, i in enumerate(early):
            gate = self._gate(jobs[i])
            if gate is not None and not reads_prompt(gate):
                fired[i] = bool(read_states({gate.site: states[gate.site][k:k + 1]}, gate).fired[0])
            if jobs[i].reads_probes:
                readings[i] = early_readings[k]
        return fired, readings

    def _joinable(self, running: Batch, group: Batch) -> bool:
        """Whether ``group`` can join ``running`` now: both hold every column, and under a sliding attention
        window the joined batch stays inside it until every row's ``max_tokens`` (its columns stay aligned)."""
        if not (running.aligned() and group.aligned()):
            return False
        if self.window is None:
            return True
        left = max(row.job.max_tokens - len(row.generated) for row in running.rows + group.rows)
        return max(running.mask.shape[1], group.mask.shape[1]) + left < self.window - 1

    # -- helpers -----------------------------------------------------------------------
    def _decode_text(self, ids: list[int]) -> str:
        return self.lm.tokenizer.decode(ids, skip_special_tokens=True)

    def _encode(self, texts: Sequence[str]) -> tuple[dict[str, torch.Tensor], Any, int]:
        """The batch's inputs, and the KV of a shared prompt prefix with its length when one is kept
        (else ``None``, 0).

        Tokenized once, by :func:`tokenize` (which refuses a batch the model or the memory cannot take);
        a kept prefix only lays the same token ids out again.
        """
        enc = tokenize(self.lm, texts)
        if self.prefixes is not None:
            rows = [ids[mask.bool()].tolist() for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
            length, cache = self.prefixes.lookup(rows)
            if cache is not None:
                enc = prefixed_batch(rows, length, self.lm.tokenizer.pad_token_id, input_device(self.lm))
                return enc, cache, length
        return enc, None, 0

    def _kv_compression(self) -> contextlib.AbstractContextManager:
        """``--kv-compress``: prune each prompt's KV cache by key norm after the prompt pass (sparekit.kv)."""
        return self.press(self.lm) if self.press else contextlib.nullcontext()

    def _gate(self, job: Job) -> Gate | None:
        """The gate that decides the row's steering, if one does: a named one that fits nothing, or the method's."""
        if job.steer is None or not job.steer.gate:
            return None
        if job.steer.gate_by is not None:
            return self._training_free_gates.setdefault(job.steer.gate_by, training_free_gate(job.steer.gate_by))
        return self.steering.gates[job.steer.method]

    def _reads_before_steering(self, job: Job) -> bool:
        """A gate on the hidden state decides before the edits; detection reads the unsteered prompt (edits below
        the probe change it)."""
        if job.steer is None:
            return False
        gate = self._gate(job)
        if gate is not None and not reads_prompt(gate):
            return True
        deepest = max(self.probes.sites.values()).layer if job.reads_probes else -1
        return min(s.layer for s, _ in self._edits(job.steer)) <= deepest

    def _sites_for(self, jobs: Sequence[Job]) -> list[Site]:
        sites = {s for job in jobs if job.reads_probes for s in self.probes.sites.values()}
        gates = [self._gate(job) for job in jobs]
        sites |= {gate.site for gate in gates if gate is not None and not reads_prompt(gate)}
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
            if job.steer.gate_by is not None:
                out["gate_by"] = job.steer.gate_by
        return out


def load_steering(lm: LoadedModel, fitted_roots: Sequence[Path]) -> Steering:
    """Fitted bundles (:class:`~sparekit.steering.fitted.FittedBundle`) by folder name, and their conflict gates
    (a probe gate read off the batch's prompt pass, a recall gate by its closed-book generation before it);
    without any, those shipped for the model. A method without one refuses ``gate=true`` with a 400."""
    roots = list(fitted_roots)
    shipped = assets_for(lm.info)
    if not roots and shipped is not None:  # the shipped bundles the server can mix in a batch
        roots = [shipped.steering(label) for label in shipped.steering_labels(SERVABLE_KINDS)]
    bundles = {root.name: FittedBundle.load(root, lm.info.model_hash) for root in roots}
    return Steering({label: dict(b.directions) for label, b in bundles.items()},
                    {label: b.gate for label, b in bundles.items() if b.gate is not None})


def build_engine(lm: LoadedModel, probe_dir: Path | None = None, fitted: Sequence[Path] = (),
                 kv_ratio: float = 0.0, prefix_cache: bool = True, batching: Batching = "retire") -> Engine:
    """What ``sparekit serve`` runs: probes (explicit, else the shipped ones, else none), fitted methods,
    and the request-time demonstrations of ``/v1/answer`` prompts (:func:`~sparekit.probes.detect.request_shots`).
    """

    probes = probes_for(lm, probe_dir)
    shots = request_shots(None if probes is None else probes.folder)
    return Engine(lm, probes, load_steering(lm, fitted), shots, kv_ratio, prefix_cache, batching)
