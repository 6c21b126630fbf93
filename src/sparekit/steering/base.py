"""One interface for every steering method.

A method is fitted on behaviour data (prompts the unsteered model answered from the
context or from memory, with their last-prompt-token hidden states) and then applied
as a context manager around generation::

    method = ActAdd(layer=6).fit(behaviour)
    with method.steer(lm, toward="memory", strength=4.0) as steered:
        answers = steered.generate(prompts)          # list[SteeringPrompt] -> list[str]
        # ungated hook-based methods also steer a plain lm.model.generate(...) inside the block

Methods differ in three overridable places only: :meth:`SteeringMethod.edits` (residual
edits through the shared :class:`~sparekit.hooks.Hooks`), :meth:`SteeringMethod.rewrite`
(prompt-level methods such as ICL) and :meth:`SteeringMethod.logits_processor`
(decoding-level methods such as CAD and DoLa). Edits touch the last prompt token of
the prompt pass only. A ``gate`` restricts all three to the prompts where it fires,
decided before steering: on their unsteered activations (the conflict probe) or on the prompt
itself (the recall gate, :mod:`sparekit.steering.gate`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from sparekit.artifacts import KINDS, Artifact, join_keyed, save_artifact, split_keyed
from sparekit.data.dataset import ConflictDataset, ConflictExample
from sparekit.data.formats import PromptFormat
from sparekit.data.prompts import THREE_SHOT, build_prompt
from sparekit.errors import SparekitError
from sparekit.evaluation.generation import answer_nll, batches, greedy_generate
from sparekit.hooks import Hooks, Site
from sparekit.models.loading import LoadedModel
from sparekit.probes.reading import read_prompts
from sparekit.utils.config import finite_number
from sparekit.utils.guards import MIN_BEHAVIOUR_PER_SIDE, warn_small_data
from sparekit.utils.params import Params
from sparekit.utils.registry import Registry

Direction = Literal["context", "memory"]
DIRECTIONS: tuple[Direction, ...] = ("context", "memory")
EditFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ControlVector:
    """What a method adds at each layer for one direction and strength.

    ``exact``: False when the method's edit depends on the input and ``vectors`` is a fixed
    stand-in for it; ``note`` says which.
    """

    vectors: dict[int, torch.Tensor]
    exact: bool
    note: str = ""


def shift_edit(shift: torch.Tensor) -> EditFn:
    """The edit ``h -> h + shift``."""

    def edit(h: torch.Tensor) -> torch.Tensor:
        return h + shift.to(h.dtype)

    return edit


REGISTRY: Registry = Registry("steering method", "kind")


def register(name: str) -> Callable[[type], type]:
    """Register a steering method under ``name``, also as a kind :func:`sparekit.load` reads."""
    return lambda cls: KINDS.register(name)(REGISTRY.register(name)(cls))


@dataclass(frozen=True)
class SteeringPrompt:
    """A test item with its demonstrations (blocks of ``fmt``), kept structured so any method can rebuild it."""

    example: ConflictExample
    context: Literal["org", "sub"] | None
    demos: tuple[str, ...]
    fmt: PromptFormat = THREE_SHOT

    @property
    def text(self) -> str:
        return build_prompt(self.example, self.context, self.demos, self.fmt)

    @property
    def text_without_context(self) -> str:
        """Same demonstrations, test item closed-book (the contrast CAD needs)."""
        return build_prompt(self.example, None, self.demos, self.fmt)


@dataclass
class BehaviourData:
    """Prompts labelled by what the unsteered model did, with their hidden states.

    ``labels``: 1 = used the context, 0 = used memory. ``hidden[layer]``: float32
    ``[n, d_model]`` at the last prompt token (residual stream after block ``layer``).
    ``pool``: the feature-learning question groups (ICL draws demonstrations here).
    ``lm``: the model that answered, for methods that fit by running it (JUICE, SpARE's output score).
    """

    prompts: list[SteeringPrompt]
    labels: np.ndarray
    hidden: dict[int, torch.Tensor]
    pool: ConflictDataset | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    lm: LoadedModel | None = None

    def model(self, who: str) -> LoadedModel:
        """The model behind the data, for methods that must run it to fit."""
        if self.lm is None:
            raise SparekitError(f"{who}: fitting runs the model, but the behaviour data carries none",
                                "collect it with collect_behaviour_data, or set BehaviourData.lm")
        return self.lm

    def require_both_classes(self, who: str) -> None:
        n_context, n_memory = int((self.labels == 1).sum()), int((self.labels == 0).sum())
        if n_context == 0 or n_memory == 0:
            missing = "uses-context" if n_context == 0 else "uses-memory"
            raise SparekitError(
                f"{who}: behaviour data has no {missing} examples ({n_context} context, {n_memory} memory)",
                "use more feature-learning groups or other demonstration flavours/seeds",
            )
        warn_small_data(f"{who} fit", {"uses-context prompts": n_context, "uses-memory prompts": n_memory},
                        MIN_BEHAVIOUR_PER_SIDE, "fit on more pool groups or behaviour seeds (bench steer: --pool-groups, "
                                                "--behaviour-seeds) or a larger dataset")

    def layer(self, layer: int, who: str) -> torch.Tensor:
        if layer not in self.hidden:
            raise SparekitError(f"{who}: no hidden states for layer {layer} in the behaviour data",
                                f"collect layers {sorted(self.hidden)} or include {layer}")
        return self.hidden[layer].float()

    def group_means(self, layer: int, who: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean hidden state over uses-context and over uses-memory prompts."""
        h = self.layer(layer, who)
        labels = torch.as_tensor(self.labels)
        return h[labels == 1].mean(0), h[labels == 0].mean(0)


class Gate:
    """Decides per prompt whether steering applies: from the hidden state at :attr:`site` (:meth:`fire`, e.g.
    the conflict probe) or, where :meth:`decide` is overridden, from the prompt itself (e.g. the recall gate)."""

    site: Site
    #: how a fitted bundle records a gate that fits nothing (``"recall"``); empty for one saved as a folder
    name: ClassVar[str] = ""

    def fire(self, h: torch.Tensor) -> torch.Tensor:
        """``[batch, d]`` hidden states at :attr:`site` -> boolean ``[batch]``."""
        raise NotImplementedError

    def signature(self) -> str:
        """What decides where the gate fires, as a short string: a benchmark's cached gated cells are read back
        only under the same signature (a gate that changed decides anew). By default its class's name: a gate
        with state of its own (a fitted probe, a reading that gets revised) says more."""
        return type(self).__qualname__

    def decide(self, lm: LoadedModel, prompts: Sequence[SteeringPrompt]) -> torch.Tensor:
        """Boolean ``[batch]`` (on the CPU): where steering applies. :class:`Steered` calls it with its edits
        switched off, so whatever it runs sees the unsteered model; by default one forward stopped at
        :attr:`site`, read by :meth:`fire`."""
        return read_prompts(lm, [p.text for p in prompts], gate=self).fired.cpu()

    def decide_texts(self, lm: LoadedModel, texts: Sequence[str], closed: Sequence[str],
                     questions: Sequence[str]) -> torch.Tensor:
        """:meth:`decide` on prompts given as text, each with its closed-book twin and question (the server's rows):
        a gate that reads the prompt itself overrides it; by default the hidden state at :attr:`site` decides."""
        return read_prompts(lm, list(texts), gate=self).fired.cpu()


class Steered:
    """What ``with method.steer(...)`` yields: generation under the chosen steering.

    With a gate, each batch is first read *unsteered* (a forward pass stopped at the gate's
    site, with every edit of this steering switched off), and the gate decides per row on
    that reading; only then is the batch decoded, with the edit, the prompt rewrite and the
    logits processor applied to the firing rows only. Rows that do not fire are decoded
    exactly as without steering.
    """

    def __init__(self, method: SteeringMethod, lm: LoadedModel, toward: Direction, strength: float | None,
                 gate: Gate | None, batch_size: int):
        self.method, self.lm, self.toward, self.strength = method, lm, toward, strength
        self.gate, self.batch_size = gate, batch_size
        self._row_mask: torch.Tensor | None = None
        self._reading_gate = False

    def generate(self, prompts: Sequence[SteeringPrompt], max_new_tokens: int = 12) -> list[str]:
        """Greedy answers under the steering, cut at the first newline."""
        return self._run(prompts, lambda texts, processors: greedy_generate(
            self.lm, texts, max_new_tokens=max_new_tokens, batch_size=len(texts), logits_processor=processors))

    def answer_nll(self, prompts: Sequence[SteeringPrompt], answers: Sequence[str]) -> list[float]:
        """Per-token NLL of each gold answer under the steering: how fluent the steered model stays."""
        if len(answers) != len(prompts):
            raise SparekitError(f"{len(prompts)} prompts but {len(answers)} answers")
        pending = iter(answers)  # _run decodes the batches in order
        return self._run(prompts, lambda texts, processors: answer_nll(
            self.lm, texts, [next(pending) for _ in texts], batch_size=len(texts), logits_processor=processors))

    def _run(self, prompts: Sequence[SteeringPrompt], decode: Callable[[list[str], LogitsProcessorList | None], list]
             ) -> list:
        """Per batch: the gate's rows (from the unsteered prompts), rewrite, logits processors, decode."""
        outputs: list = []
        for chunk in batches(list(prompts), self.batch_size):
            chunk = list(chunk)
            self._row_mask = None if self.gate is None else self._gate_mask(chunk)
            rewritten = self.method.rewrite(chunk, self.toward, self.strength)
            if self._row_mask is not None:
                rewritten = [new if fires else old for new, old, fires in zip(rewritten, chunk, self._row_mask.tolist())]
            processors = self.method.logits_processor(self.lm, rewritten, self.toward, self.strength)
            if processors is not None and self._row_mask is not None:
                rows = self._row_mask if self.method.decode_where_gate_fires else ~self._row_mask
                processors = LogitsProcessorList([_RowGatedProcessor(processors, rows)])
            outputs += decode([p.text for p in rewritten], processors)
        return outputs

    @property
    def last_fired(self) -> torch.Tensor | None:
        """Boolean ``[batch]``: where the gate let the steering act in the last batch (None without a gate)."""
        return self._row_mask

    def _gate_mask(self, prompts: list[SteeringPrompt]) -> torch.Tensor:
        """The gate's decision per row, read with this steering's edits switched off."""
        self._reading_gate = True
        try:
            return self.gate.decide(self.lm, prompts)
        finally:
            self._reading_gate = False

    def rows(self) -> torch.Tensor | None:
        """The rows this steering's edits apply to now (:data:`~sparekit.hooks.core.Rows`): none while
        the gate reads, the rows where it fired once it has, every row without a gate."""
        if self._reading_gate:
            return torch.zeros(0, dtype=torch.long)
        if self.gate is None:
            return None
        if self._row_mask is None:
            raise SparekitError("gated steering decides per batch in Steered.generate / answer_nll",
                                "call those methods of the steered object instead of model.generate")
        return self._row_mask


class _RowGatedProcessor(LogitsProcessor):
    """Apply decoding-level steering to the gate's firing rows; the other rows keep their scores."""

    def __init__(self, processors: LogitsProcessorList, mask: torch.Tensor):
        self.processors, self.mask = processors, mask

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        steered = self.processors(input_ids, scores.clone())
        return torch.where(self.mask.to(scores.device)[:, None], steered, scores)


class SteeringMethod(Params):
    """Base class: sklearn-style (``__init__`` stores parameters, ``fit`` learns ``*_``)."""

    kind: ClassVar[str] = ""
    #: the strengths a sweep or dev-split tuning tries; empty for methods without one.
    strength_grid: ClassVar[tuple[float, ...]] = ()
    default_strength: ClassVar[float | None] = None
    #: False for methods that act the same whichever way they are asked to steer (none, DoLa).
    directional: ClassVar[bool] = True
    #: with a gate, decoding-level steering acts on the rows it fires on; False: on the others (a fallback)
    decode_where_gate_fires: bool = True

    # -- fitting --------------------------------------------------------------------
    def fit(self, data: BehaviourData) -> SteeringMethod:
        """Learn from behaviour data; the base method needs nothing."""
        self.fitted_ = True
        return self

    def check_is_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise SparekitError(f"{self.kind} is not fitted", "call .fit(behaviour_data) or load a fitted method first")

    @property
    def layers(self) -> tuple[int, ...]:
        """Layers whose hidden states :meth:`fit` reads (behaviour data must include them)."""
        return ()

    # -- the three ways to steer ----------------------------------------------------
    def edits(self, lm: LoadedModel, toward: Direction, strength: float | None) -> list[tuple[Site, EditFn]]:
        """Residual-stream edits at the last prompt token (hook-based methods override)."""
        return []

    def rewrite(self, prompts: list[SteeringPrompt], toward: Direction, strength: float | None) -> list[SteeringPrompt]:
        """Prompt-level steering (ICL overrides)."""
        return prompts

    def logits_processor(self, lm: LoadedModel, prompts: list[SteeringPrompt], toward: Direction,
                         strength: float | None) -> LogitsProcessorList | None:
        """Decoding-level steering (CAD, DoLa override)."""
        return None

    @contextlib.contextmanager
    def steer(self, lm: LoadedModel, toward: Direction, strength: float | None = None, gate: Gate | None = None,
              batch_size: int = 8) -> Iterator[Steered]:
        """Apply the method around generation; hooks are removed on exit, even after an error."""
        if toward not in DIRECTIONS:
            raise SparekitError(f"unknown direction {toward!r}", "use 'context' or 'memory'")
        self.check_is_fitted()
        strength = self.default_strength if strength is None else finite_number(strength, "strength")
        steered = Steered(self, lm, toward, strength, gate, batch_size)
        hooks = Hooks(lm)
        for site, fn in self.edits(lm, toward, strength):
            hooks.edit(site, fn, positions="last", when="prompt", rows=steered.rows)
        with hooks:
            yield steered

    def control_vector(self, toward: Direction, strength: float) -> ControlVector:
        """The fixed vector per layer this method adds (:mod:`sparekit.steering.control_vector`).

        Only methods that add a vector to the residual stream have one; the others raise.
        """
        raise SparekitError(f"{self.kind} adds no fixed vector to the residual stream, so it has no control vector",
                            "export a method that does: actadd, knob, spare (approximated) or cvec")

    # -- persistence -------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Learned tensors to save: attributes ending in ``_`` holding a tensor or a ``{layer: tensor}`` dict."""
        return join_keyed({k: v for k, v in vars(self).items() if k.endswith("_")})

    def state_extra(self) -> dict[str, Any]:
        """Learned non-tensor state (JSON-serialisable)."""
        return {}

    def load_extra(self, extra: dict[str, Any]) -> None:
        """Restore what :meth:`state_extra` saved."""

    def load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        """Restore what :meth:`state_tensors` and :meth:`state_extra` saved."""
        for attr, value in split_keyed(tensors).items():
            setattr(self, attr, value)
        self.load_extra(extra)

    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` + ``tensors.safetensors`` into the folder ``path`` (:mod:`sparekit.artifacts`)."""
        self.check_is_fitted()
        return save_artifact(path, self.kind, self.get_params(), self.state_tensors(), self.state_extra())

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> SteeringMethod:
        method = cls().set_params(**artifact.params)
        method.load_state(artifact.tensors, artifact.state)
        method.fitted_ = True
        return method


def make_method(kind: str, **params: Any) -> SteeringMethod:
    """Instantiate a registered method by name."""
    return REGISTRY.lookup(kind)().set_params(**params)


def fitted_without_data(kind: str, **params: Any) -> SteeringMethod:
    """A method that learns nothing from behaviour data (``none``, a decoding contrast), fitted and ready to steer;
    a clear error for one that does."""
    method = make_method(kind, **params)
    try:
        return method.fit(None)  # type: ignore[arg-type]
    except AttributeError:
        raise SparekitError(f"{kind} learns from behaviour data and cannot be fitted without it",
                            "fit it on the data of sparekit.steering.collect_behaviour_data") from None


def edit_rows(hooks: Hooks, per_row: Sequence[Sequence[tuple[Site, EditFn]] | None]) -> Hooks:
    """Declare each batch row's own edits on ``hooks`` (a server mixes methods, directions and strengths).

    Row ``i`` gets ``per_row[i]`` (at its last prompt token, on the prompt pass); rows with
    ``None``, or with no edit at a site, keep their activation there. Rows holding the same
    edit function share one call.
    """
    groups: dict[tuple[Site, int], tuple[EditFn, list[int]]] = {}
    for row, edits in enumerate(per_row):
        for site, fn in edits or ():
            groups.setdefault((site, id(fn)), (fn, []))[1].append(row)
    for (site, _), (fn, rows) in groups.items():
        hooks.edit(site, fn, positions="last", when="prompt", rows=rows)
    return hooks


def with_strength_sign(toward: Direction) -> float:
    """+1 toward context, -1 toward memory: the sign of a context-minus-memory direction."""
    return 1.0 if toward == "context" else -1.0


__all__ = [
    "DIRECTIONS", "REGISTRY", "BehaviourData", "ControlVector", "Direction", "Gate", "Steered", "SteeringMethod",
    "SteeringPrompt", "make_method", "register", "edit_rows", "shift_edit", "with_strength_sign",
]
