"""The steering benchmark's protocol: what decides its numbers (:class:`BenchConfig`, the paper preset), the
method labels it runs (``spare+gate``, ``spare+cad``) and the prompts and cell names every room shares.

Protocol (method.md, SpARE section): the memorised items of a dataset are split by
question group into a feature-learning *pool* (behaviour data, ICL demonstrations,
the gate's conflict probe), a *dev* split (each method's hyper-parameters and
strength per direction) and a *test* split (every reported number). Test prompts use
``k_shot`` org_ctx/org_ans demonstrations from the pool, a different draw per seed. ``fit_formats``: the
prompt formats of everything fitted or tuned (each item asked in one of them); ``test_format`` renders the test
prompts in one format, so a format outside ``fit_formats`` is held out.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sparekit.data.dataset import ConflictDataset
from sparekit.data.formats import DEFAULT_FORMAT, FORMATS, PromptFormat
from sparekit.data.prompts import THREE_SHOT, demo_block, item_demos, item_format
from sparekit.errors import SparekitError
from sparekit.evaluation.harness import MEMORISED_SEED  # memorised_seeds' default
from sparekit.reporting.steering import describe
from sparekit.steering.base import Direction, SteeringMethod, SteeringPrompt, make_method

DEFAULT_METHODS = ("none", "icl", "cad", "dola", "actadd", "sea", "knob", "spare", "spare+gate")
#: config keys a rerun may change: methods run, the dev grids (a changed grid is re-tuned, reusing every
#: cell already generated) and the seeds (they choose only the test demonstrations; behaviour data, fits
#: and dev tuning never read them, so added seeds add test cells only); the test format likewise
EXTENSIBLE = ("methods", "param_grids", "strength_grids", "sweep_strengths", "seeds", "test_format")
#: the demonstration seed of the dev prompts (test prompts use the config's seeds)
DEV_SEED = 7
#: "sparekit": this project's protocol (module docstring); "paper": the official SpARE code's (:func:`paper_config`)
PROTOCOLS = ("sparekit", "paper")
#: the decoding-level methods a label may add to another (``spare+cad``)
DECODERS = ("cad", "adacad", "dola")
#: the gates a label may add: ``+gate`` the run's conflict probe (fitted on the pool, calibrated on dev),
#: ``+recall`` the recall gate (fits nothing: :class:`~sparekit.steering.gate.RecallGate`)
GATES = ("gate", "recall")


def _require_distinct(option: str, what: str, values: Sequence[Any], example: str) -> None:
    """One line where ``--option`` lists nothing or a value twice."""
    if not values or len(set(values)) < len(values):
        raise SparekitError(f"--{option} {','.join(map(str, values))!r}: give one or more distinct {what}",
                            f"e.g. --{option} {example}")


@dataclass
class BenchConfig:
    """Everything that determines a steering benchmark's numbers."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    seeds: tuple[int, ...] = (42, 43, 44)
    layers: tuple[int, ...] = (5, 6, 7, 8)
    pool_groups: int = 128
    dev_groups: int = 32
    test_limit: int | None = 150
    behaviour_seeds: tuple[int, ...] = (0, 1)
    k_shot: int = 3
    split_seed: int = 0
    gate_layer: int | None = None  # default: the best dev AUROC among the layers from 1/3 depth on
    gate_max_false_positive_rate: float = 0.05  # the gate's threshold: this share of dev no-conflict prompts fire
    param_grids: dict[str, dict[str, list]] = field(default_factory=dict)
    strength_grids: dict[str, list[float]] = field(default_factory=dict)
    sweep_strengths: dict[str, list[float]] = field(default_factory=dict)  # frontier only, beyond the dev grid
    #: leave-one-relation-out: test on this relation's items, fit and tune on the other relations only
    held_out_relation: str | None = None
    #: one of :data:`PROTOCOLS`
    protocol: str = "sparekit"
    #: leave-one-kind-out: test on this kind's items (every relation of it), fit and tune on the other kinds only
    held_out_kind: str | None = None
    #: the prompt format of the test prompts; outside ``fit_formats`` it is a held-out format. Its cells and results
    #: sit beside the three_shot ones (:meth:`test_split`, :meth:`output`)
    test_format: str = DEFAULT_FORMAT
    #: the prompt formats of the behaviour data, the gate's prompts and dev: each item is asked in one of them
    #: (:func:`~sparekit.data.prompts.item_format`), so fits and tuning see every format named here
    fit_formats: tuple[str, ...] = (DEFAULT_FORMAT,)
    #: an item counts as memorised where the model answers it right closed-book under each of these seeds'
    #: demonstrations: several keep out the items it recalls only under some (a fifth of the memorised items are
    #: answered otherwise under the test prompts' own demonstrations: BENCHMARKS.md, "Sixth design round")
    memorised_seeds: tuple[int, ...] = (MEMORISED_SEED,)

    def __post_init__(self) -> None:
        if self.held_out_relation is not None and self.held_out_kind is not None:
            raise SparekitError("both a held-out relation and a held-out kind were given",
                                "hold out one relation or one kind, not both")
        if self.protocol not in PROTOCOLS:
            raise SparekitError(f"unknown protocol {self.protocol!r}", f"use one of {', '.join(PROTOCOLS)}")
        for name in (self.test_format, *self.fit_formats):  # an unknown format fails before any work
            FORMATS.lookup(name)
        _require_distinct("memorised-seeds", "seeds", self.memorised_seeds, f"{MEMORISED_SEED},0,1")
        _require_distinct("fit-formats", "formats", self.fit_formats, f"{DEFAULT_FORMAT},zero_shot,llamaindex")
        if self.protocol == "paper" and (self.test_format, *self.fit_formats) != (DEFAULT_FORMAT,) * 2:
            raise SparekitError("the paper protocol fits and tests its own three-shot prompts",
                                "drop --test-format and --fit-formats or use --protocol sparekit")
        gates = [method_kind(label)[1] for label in self.methods]  # a misspelt suffix fails before any work
        if self.protocol == "paper" and "gate" in gates:
            raise SparekitError("the paper protocol has no dev split to calibrate a gate on",
                                "drop the +gate methods or use --protocol sparekit")

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> BenchConfig:
        """The config a run directory's ``config.json`` records (:meth:`record`; other keys ignored)."""
        known = {f.name: record[f.name] for f in fields(cls) if f.name in record}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in known.items()})

    def held_out(self) -> tuple[str, str] | None:
        """(field, value) of what is held out (``("kind", "numbers")``), or ``None`` for an in-distribution run."""
        if self.held_out_kind is not None:
            return "kind", self.held_out_kind
        return None if self.held_out_relation is None else ("relation", self.held_out_relation)

    def record(self) -> dict[str, Any]:
        """The fields a run directory records and compares; ``held_out_kind``, ``test_format``, ``fit_formats`` and
        ``memorised_seeds`` only when set, so run directories written before they existed still resume."""
        fields = asdict(self)
        if tuple(fields["memorised_seeds"]) == (MEMORISED_SEED,):
            del fields["memorised_seeds"]
        if fields["held_out_kind"] is None:
            del fields["held_out_kind"]
        if fields["test_format"] == DEFAULT_FORMAT:
            del fields["test_format"]
        if tuple(fields["fit_formats"]) == (DEFAULT_FORMAT,):
            del fields["fit_formats"]
        return fields

    @property
    def test_split(self) -> str:
        """The cells' folder of the test split: ``test``, or ``test-<format>`` for another test format."""
        return "test" if self.test_format == DEFAULT_FORMAT else f"test-{self.test_format}"

    def output(self, name: str) -> str:
        """A test-derived output's file name: ``results.json``, or ``results-rag.json`` for the rag format."""
        if self.test_format == DEFAULT_FORMAT:
            return name
        stem, dot, ext = name.rpartition(".")
        return f"{stem}-{self.test_format}{dot}{ext}"

    def grid(self, kind: str) -> dict[str, list]:
        """Hyper-parameters tuned on dev besides strength (layer choices for one-layer methods)."""
        if kind in self.param_grids:
            return self.param_grids[kind]
        defaults = {"spare": {"mi_mass": [0.05, 0.1, 0.2, 0.4]}, "actadd": {"layer": list(self.layers)},
                    "knob": {"layer": list(self.layers)}, "sea": {"layer": list(self.layers)}}
        return defaults.get(kind, {})

    def strengths(self, method: SteeringMethod) -> tuple[float | None, ...]:
        """The strengths tuned on dev for ``method`` (its own grid unless overridden)."""
        grid = self.strength_grids.get(method.kind, method.strength_grid)
        return tuple(grid) or (None,)

    def sweep(self, method: SteeringMethod) -> tuple[float | None, ...]:
        """The strengths of ``method``'s frontier: the dev grid plus ``sweep_strengths`` (test seed only)."""
        tuned = self.strengths(method)
        extra = self.sweep_strengths.get(method.kind, []) if tuned != (None,) else []
        return tuple(sorted(set(tuned) | set(extra)))


def paper_config(**overrides: Any) -> BenchConfig:
    """The official SpARE code's protocol (yuzhaouoe/SAE-based-representation-engineering), as a preset.

    - pool: 128 question groups drawn among the groups with a memorised row, with *all* their rows;
    - behaviour data: every k in {3, 4, 5} for seeds 42–46, the three flavours of one (item, seed, k)
      sharing their demonstration rows (:func:`~sparekit.steering.behaviour.behaviour_prompts` ``every_k``);
    - test: every row outside the pool groups, memorised or not, with one fixed set of 3 org_ctx/org_ans
      demonstrations per seed (the first row of 3 pool groups in a seeded order), seeds 42–46;
    - no dev split: SpARE uses the paper's values for the model family (Gemma: K = 0.01, α = 1.8 toward
      memory and 3.0 toward context; otherwise K = 0.07, α = 2), other methods their default strength.

    Deliberate differences: answers are cut at the first newline (the official steered decoding stops
    only at the token that ends "\n\n", so a model that writes a single newline keeps going and fails EM:
    a pitfall, not a protocol choice); the official code reshuffles one list of pool groups in place for
    every seed's fixed demonstrations, so they depend on call order; here each seed draws from a fresh
    copy; SpARE edits the same ``layers`` in both directions (the paper's Gemma-2 memory run used others).
    """
    preset: dict[str, Any] = {"protocol": "paper", "methods": tuple(m for m in DEFAULT_METHODS if "+" not in m),
                              "seeds": (42, 43, 44, 45, 46),
                              "behaviour_seeds": (42, 43, 44, 45, 46), "pool_groups": 128, "dev_groups": 0,
                              "test_limit": None}
    return BenchConfig(**{**preset, **overrides})


def paper_choice(kind: str, model_type: str, toward: Direction) -> dict[str, Any]:
    """What the paper protocol runs for ``kind`` (no tuning): the published SpARE values, else defaults."""
    if kind != "spare":
        return {"params": {}, "strength": make_method(kind).default_strength, "dev_em": None}
    gemma = model_type.startswith("gemma")
    alpha = (1.8 if toward == "memory" else 3.0) if gemma else 2.0
    return {"params": {"mi_mass": 0.01 if gemma else 0.07}, "strength": alpha, "dev_em": None}


def fixed_demos(pool: ConflictDataset, seed: int, k_shot: int) -> tuple[str, ...]:
    """The paper protocol's test demonstrations: the first row of ``k_shot`` pool groups in a seeded order."""
    groups = sorted(pool.group_index().items())
    random.Random(seed).shuffle(groups)
    return tuple(demo_block(pool[rows[0]], "org_org") for _, rows in groups[:k_shot])


def method_kind(label: str) -> tuple[str, str | None]:
    """``"spare+gate"`` -> ("spare", "gate"), ``"cad+recall"`` -> ("cad", "recall"), ``"cad"`` -> ("cad", None):
    the method and its gate (one of :data:`GATES`); see :func:`partner` for the decoding suffix."""
    kind, *suffixes = label.split("+")
    gates = [s for s in suffixes if s in GATES]
    extra = [s for s in suffixes if s not in GATES]
    if len(gates) > 1 or len(extra) > 1 or (extra and extra[0] not in DECODERS):
        raise SparekitError(f"unknown method variant {label!r}",
                            "append +gate (the conflict probe) or +recall (the recall gate) to gate a method, "
                            f"and/or +{'/+'.join(DECODERS)} to combine it with a decoding-level method")
    return kind, gates[0] if gates else None


def partner(label: str) -> tuple[str | None, bool]:
    """The decoding-level partner of a combined label, and whether it is a fallback.

    ``spare+cad``: SpARE and CAD on every prompt; ``spare+cad+gate``: both where the conflict
    gate fires; ``spare+gate+cad``: SpARE where the gate fires, CAD (the fallback) where it does not
    (the same with ``+recall`` for the recall gate).
    """
    gate = method_kind(label)[1]
    suffixes = label.split("+")[1:]
    extra = [s for s in suffixes if s not in GATES]
    if not extra:
        return None, False
    return extra[0], gate is not None and suffixes.index(gate) < suffixes.index(extra[0])


def eval_prompts(items: ConflictDataset, demo_pool: ConflictDataset, context: str, seed: int,
                 k_shot: int, formats: Sequence[PromptFormat] = (THREE_SHOT,)) -> list[SteeringPrompt]:
    """The benchmark's prompts (dev, test, the gate's): org_ctx/org_ans demonstrations from the pool, drawn
    per (seed, item) by :func:`~sparekit.data.prompts.item_demos`, the draw the evaluation harness makes, so
    each prompt's text is the harness's ``condition_prompts(items, context, seed, k_shot, demo_pool)``.
    Each item is asked in one of ``formats`` (:func:`~sparekit.data.prompts.item_format`), its
    demonstrations rendered in it; a format without demonstrations (``shots`` 0: zero_shot, rag,
    llamaindex, chat) gets none, as at request time."""
    prompts = []
    for ex in items:
        fmt = item_format(ex, formats)
        demos = item_demos(ex, demo_pool, seed, k_shot if fmt.shots else 0, fmt=fmt)
        prompts.append(SteeringPrompt(ex, context, demos, fmt))  # type: ignore[arg-type]
    return prompts


def test_prompts(config: BenchConfig, test: ConflictDataset, pool: ConflictDataset, context: str,
                 seed: int, fmt: PromptFormat = THREE_SHOT) -> list[SteeringPrompt]:
    """Test prompts: demonstrations per item (:func:`eval_prompts`), or one fixed set per seed (paper).
    ``fmt``: ``config.test_format`` built (``chat`` needs the model's tokenizer)."""
    if config.protocol == "paper":
        demos = fixed_demos(pool, seed, config.k_shot)
        return [SteeringPrompt(ex, context, demos) for ex in test]  # type: ignore[arg-type]
    return eval_prompts(test, pool, context, seed, config.k_shot, (fmt,))


def cell_params(label: str, params: dict, partner_strength: float | None) -> dict:
    """The parameters that name a label's cells: its own, and for a combined label (:func:`partner`)
    also its partner's dev-tuned strength."""
    other = partner(label)[0]
    return params if other is None else {**params, f"{other}_strength": partner_strength}


def setting_slug(label: str, params: dict, strength: float | None) -> str:
    """The start of a cached cell's file name: method label, :func:`describe` of the parameters (hashed
    when too long for a file name) and strength; seed, context and direction follow."""
    text = describe(params)
    return f"{label}-{text if len(text) < 40 else hashlib.sha256(text.encode()).hexdigest()[:10]}-{strength}"
