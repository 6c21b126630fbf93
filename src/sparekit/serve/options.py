"""A request's sparekit options, ``{"sparekit": {"detect": …, "steer": {…}}}``: the one schema and the one
validator of both engines of ``sparekit serve`` (the built-in one and the vLLM plugin, ``plugins/vllm``).

Checked by hand rather than by pydantic so that each bad value gets one sentence naming the valid ones,
worded alike on both engines. A refusal is an :class:`OptionError` (a 400 ``invalid_request_error``
naming the ``param``), raised before the request reaches a batch, so nothing else in it is affected.

Free of transformers, torch and FastAPI on purpose: the vLLM plugin imports it in vLLM's own
environment, which pins its own transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sparekit.probes.detectors import DEFAULT_DETECTOR, DETECTORS, GATE_BY, resolve_detector

#: where sparekit's options go in a request body (``extra_body={"sparekit": {...}}`` with the openai client)
OPTIONS_KEY = "sparekit"
#: the keys under it, and under its ``steer``
OPTION_KEYS = ("detect", "steer")
STEER_KEYS = ("method", "toward", "strength", "gate")
DEFAULT_METHOD = "spare"


class OptionError(Exception):
    """A request the server refuses: a 400 ``invalid_request_error`` with ``param``."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param

    def body(self) -> dict:
        """The OpenAI-shaped error body (what the ``openai`` client reads into ``BadRequestError``)."""
        return {"error": {"message": self.message, "type": "invalid_request_error", "param": self.param,
                          "code": None}}


@dataclass(frozen=True)
class RowSteer:
    """A checked steering order for one request: a fitted method's label, a direction, a strength,
    whether a conflict gate decides and which: the method's own (``gate_by`` ``None``) or one that fits nothing
    (``"recall"``)."""

    method: str
    toward: str
    strength: float
    gate: bool = False
    gate_by: str | None = None


@dataclass(frozen=True)
class Options:
    """``detect``: read the prompt's conflict, with ``detector``; ``steer``: how to steer it, if at all."""

    detect: bool = False
    steer: RowSteer | None = None
    detector: str = DEFAULT_DETECTOR


@dataclass(frozen=True)
class Capabilities:
    """What the loaded folders allow: the tuned strength per method and direction, the gated methods,
    whether probes were loaded, the detectors other than the probe the engine runs (the built-in engine: those
    that fit nothing and the probe combinations fitted beside its probes; the vLLM plugin: none), and the largest
    strength a request may ask for."""

    methods: dict[str, dict[str, float]] = field(default_factory=dict)
    gates: frozenset[str] = frozenset()
    #: the gated methods whose own gate reads the prompt's closed-book twin and question (a recall gate)
    twin_gates: frozenset[str] = frozenset()
    can_detect: bool = False
    max_strength: float = 16.0
    detectors: frozenset[str] = frozenset()

    @property
    def available_detectors(self) -> list[str]:
        """``auto`` wherever the probe or recall reads, the probe where probes were loaded, and the others."""
        can = {*self.detectors, *(("probe",) if self.can_detect else ())}
        return [d for d in DETECTORS if d in can or (d == "auto" and can & {"probe", "recall"})]

    def detector_for(self, detector: str, knows_context: bool) -> str:
        """The detector that reads one prompt: ``auto`` is recall where this engine runs it and the prompt's
        question and context are known, else the probe (:func:`~sparekit.probes.detectors.resolve_detector`)."""
        return resolve_detector(detector, knows_context and "recall" in self.detectors)

    def gate_reads_twin(self, steer: RowSteer | None) -> bool:
        """Whether ``steer``'s gate reads the prompt's closed-book twin and question, which the request must then
        give (a context and question apart, or ``three_shot`` blocks)."""
        return steer is not None and steer.gate and (steer.gate_by is not None or steer.method in self.twin_gates)


def parse_options(raw: Any, caps: Capabilities, param: str = OPTIONS_KEY) -> Options:
    """The checked :class:`Options` of a request's ``sparekit`` value (``None``: none asked), or an
    :class:`OptionError`."""
    if raw is None:
        return Options()
    if not isinstance(raw, dict):
        raise OptionError(f"{param} must be an object with {' and/or '.join(OPTION_KEYS)}.", param)
    _refuse_unknown(raw, OPTION_KEYS, param)
    detect, detector = parse_detect(raw.get("detect", False), caps, f"{param}.detect")
    steer = raw.get("steer")
    return Options(detect, None if steer is None else parse_steer(steer, caps, f"{param}.steer"), detector)


def parse_detect(raw: Any, caps: Capabilities, param: str) -> tuple[bool, str]:
    """``detect``: ``false``, ``true`` (the default detector, what ``sparekit detect`` reads) or a detector's name;
    whether to read and with which detector, or an :class:`OptionError` naming those this engine runs."""
    if isinstance(raw, bool) and not raw:
        return False, DEFAULT_DETECTOR
    detector = DEFAULT_DETECTOR if raw is True else raw
    if not isinstance(detector, str):
        raise OptionError(f"{param} must be true, false or a detector's name (got {raw!r}).", param)
    if detector not in DETECTORS:
        raise OptionError(f"Unknown detector {detector!r}; valid detectors: {', '.join(DETECTORS)}.", param)
    if detector not in caps.available_detectors:
        if not caps.can_detect and (detector.startswith("probe") or detector == "auto"):
            raise OptionError("Detection is not available: no conflict probes were loaded for this model "
                              "(start the server with --probe DIR).", param)
        raise OptionError(f"The {detector} detector is not available on this server; available: "
                          f"{', '.join(caps.available_detectors) or 'none'}.", param)
    return True, detector


def parse_steer(raw: Any, caps: Capabilities, param: str) -> RowSteer | None:
    """A checked :class:`RowSteer` (``None`` for method ``none``); the message names the valid values."""
    if not isinstance(raw, dict):
        raise OptionError(f"{param} must be an object with {', '.join(STEER_KEYS)}.", param)
    _refuse_unknown(raw, STEER_KEYS, param)
    method = raw.get("method", DEFAULT_METHOD)
    if method == "none":
        return None
    if not caps.methods:
        raise OptionError("Steering is not available: no fitted methods were loaded for this model (valid "
                          "methods: none; start the server with --fitted DIR).", f"{param}.method")
    if not isinstance(method, str) or method not in caps.methods:
        valid = ", ".join(["none", *sorted(caps.methods)])
        raise OptionError(f"Unknown steering method {method!r}; valid methods: {valid}.", f"{param}.method")
    toward, directions = raw.get("toward"), sorted(caps.methods[method])
    if toward not in directions:
        raise OptionError(f"steer.toward must be one of: {', '.join(directions)} (got {toward!r}).",
                          f"{param}.toward")
    tuned = caps.methods[method][toward]
    strength = tuned if raw.get("strength") is None else raw["strength"]
    if (isinstance(strength, bool) or not isinstance(strength, int | float) or not math.isfinite(strength)
            or not 0 <= strength <= caps.max_strength):
        raise OptionError(f"steer.strength must be a number from 0 to {caps.max_strength:g} "
                          f"(got {raw.get('strength')!r}; {method} toward {toward} is tuned at {tuned:g}).",
                          f"{param}.strength")
    gate, gate_by = _parse_gate(raw.get("gate", False), method, caps, f"{param}.gate")
    return RowSteer(method, toward, float(strength), gate, gate_by)


def _parse_gate(raw: Any, method: str, caps: Capabilities, param: str) -> tuple[bool, str | None]:
    """``gate``: ``false``, ``true`` (the method's own gate) or the name of a gate that fits nothing (``"recall"``,
    on an engine that runs that detector): whether a gate decides, and the name of the one that fits nothing."""
    by = [name for name in GATE_BY if name in caps.detectors]
    if isinstance(raw, str) and raw in by:
        return True, raw
    if not isinstance(raw, bool):
        named = f", {', '.join(repr(name) for name in by)}" if by else ""
        unrun = " (this server does not run the recall detector)" if raw in GATE_BY and not by else ""
        raise OptionError(f"steer.gate must be true, false{named} (got {raw!r}){unrun}.", param)
    if raw and method not in caps.gates:
        to = "".join(f' or "{name}"' for name in by)
        use = f", or use a gated method: {', '.join(sorted(caps.gates))}" if caps.gates else ""
        raise OptionError(f"Method {method!r} has no conflict gate this server runs (the vLLM engine runs probe "
                          f"gates only); set gate to false{to}{use}.", param)
    return raw, None


def _refuse_unknown(raw: dict, valid: tuple[str, ...], param: str) -> None:
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise OptionError(f"Unknown parameter: {param}.{unknown[0]} (valid: {', '.join(valid)}).",
                          f"{param}.{unknown[0]}")
