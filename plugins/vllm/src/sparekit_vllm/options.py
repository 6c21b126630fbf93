"""A request's sparekit options: the same ``{"sparekit": {"detect": …, "steer": {…}}}`` body key as the
built-in engine of ``sparekit serve``, checked here against what the server loaded.

A bad value is an :class:`OptionError` (an OpenAI-shaped 400 naming the ``param``) raised in the API
server before the request reaches the engine, so nothing else in a batch is affected. What reaches a
worker is a :class:`Plan` (what to read and edit at the request's last prompt token), carried as one
JSON string in ``SamplingParams.extra_args`` (``vllm_xargs``: vLLM's per-request extension field).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

#: where sparekit's options go in a request body (``extra_body={"sparekit": {...}}`` with the openai client)
OPTIONS_KEY = "sparekit"
#: the ``extra_args`` key a :class:`Plan` travels under
PLAN_KEY = "sparekit_plan"
DIRECTIONS = ("context", "memory")
STEER_KEYS = ("method", "toward", "strength", "gate")


class OptionError(Exception):
    """A request the server refuses: a 400 ``invalid_request_error`` with ``param``."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": "invalid_request_error", "param": self.param,
                          "code": None}}


@dataclass(frozen=True)
class Steer:
    """A checked steering request: a fitted method's label, a direction, a strength and the gate flag."""

    method: str
    toward: str
    strength: float
    gate: bool = False


@dataclass(frozen=True)
class Options:
    detect: bool = False
    steer: Steer | None = None


@dataclass(frozen=True)
class Capabilities:
    """What the loaded folders allow: tuned strength per method and direction, the gated methods, probes,
    and the layers that decide whether a reading must come from an unsteered pass."""

    methods: dict[str, dict[str, float]] = field(default_factory=dict)
    gates: frozenset[str] = frozenset()
    can_detect: bool = False
    probe_layer: int | None = None  # the deepest probe's layer
    first_edit_layer: dict[str, int] = field(default_factory=dict)
    max_strength: float = 16.0

    def reads_first(self, options: Options) -> bool:
        """Whether the request needs an unsteered pass first: a gate decides before the edits, and detection
        reads the unsteered prompt when an edit sits at or below the probe (as the built-in engine does)."""
        steer = options.steer
        if steer is None:
            return False
        return steer.gate or (options.detect and self.first_edit_layer[steer.method] <= (self.probe_layer or 0))


def parse_options(raw: Any, caps: Capabilities, param: str = OPTIONS_KEY) -> Options:
    """The checked :class:`Options` of a request's ``sparekit`` value, or an :class:`OptionError`."""
    if not isinstance(raw, dict):
        raise OptionError(f"{param} must be an object with 'detect' and/or 'steer'.", param)
    unknown = sorted(set(raw) - {"detect", "steer"})
    if unknown:
        raise OptionError(f"Unknown parameter: {param}.{unknown[0]} (valid: detect, steer).", f"{param}.{unknown[0]}")
    detect = raw.get("detect", False)
    if not isinstance(detect, bool):
        raise OptionError(f"{param}.detect must be true or false (got {detect!r}).", f"{param}.detect")
    if detect and not caps.can_detect:
        raise OptionError("Detection is not available: no conflict probes were loaded for this model "
                          "(sparekit serve --engine vllm --probe DIR).", f"{param}.detect")
    steer = raw.get("steer")
    return Options(detect, None if steer is None else parse_steer(steer, caps, f"{param}.steer"))


def parse_steer(raw: Any, caps: Capabilities, param: str) -> Steer | None:
    """A checked :class:`Steer` (``None`` for method ``none``); the message names the valid values."""
    if not isinstance(raw, dict):
        raise OptionError(f"{param} must be an object with {', '.join(STEER_KEYS)}.", param)
    unknown = sorted(set(raw) - set(STEER_KEYS))
    if unknown:
        raise OptionError(f"Unknown parameter: {param}.{unknown[0]} (valid: {', '.join(STEER_KEYS)}).",
                          f"{param}.{unknown[0]}")
    method = raw.get("method", "spare")
    if method == "none":
        return None
    if not caps.methods:
        raise OptionError("Steering is not available: no fitted methods were loaded for this model "
                          "(sparekit serve --engine vllm --fitted DIR).", f"{param}.method")
    if not isinstance(method, str) or method not in caps.methods:
        valid = ", ".join(sorted(caps.methods))
        raise OptionError(f"Unknown steering method {method!r}; valid methods: none, {valid}.", f"{param}.method")
    toward, directions = raw.get("toward"), sorted(caps.methods[method])
    if toward not in directions:
        raise OptionError(f"steer.toward must be one of: {', '.join(directions)} (got {toward!r}).", f"{param}.toward")
    tuned = caps.methods[method][toward]
    strength = raw.get("strength", tuned) if raw.get("strength") is not None else tuned
    if (isinstance(strength, bool) or not isinstance(strength, int | float) or not math.isfinite(strength)
            or not 0 <= strength <= caps.max_strength):
        raise OptionError(f"steer.strength must be a number from 0 to {caps.max_strength:g} "
                          f"(got {raw.get('strength')!r}; {method} toward {toward} is tuned at {tuned:g}).",
                          f"{param}.strength")
    gate = raw.get("gate", False)
    if not isinstance(gate, bool):
        raise OptionError(f"steer.gate must be true or false (got {gate!r}).", f"{param}.gate")
    if gate and method not in caps.gates:
        raise OptionError(f"No calibrated conflict gate for method {method!r}; set gate to false.", f"{param}.gate")
    return Steer(method, toward, float(strength), gate)


@dataclass(frozen=True)
class Plan:
    """What a worker does at one request's last prompt token: read the probes, read a method's gate,
    apply a steering edit; the readings are kept under ``key`` for the API server to collect."""

    key: str
    detect: bool = False
    gate: str | None = None  # the method whose gate to read
    steer: Steer | None = None

    def extra_args(self) -> dict[str, str]:
        """The ``vllm_xargs`` / ``SamplingParams.extra_args`` entry carrying this plan."""
        return {PLAN_KEY: json.dumps(asdict(self))}

    @classmethod
    def from_extra_args(cls, extra_args: dict | None) -> Plan | None:
        """The plan in a request's ``extra_args`` (``None``: the request asks sparekit for nothing)."""
        text = (extra_args or {}).get(PLAN_KEY)
        if text is None:
            return None
        data = json.loads(text)
        steer = data.pop("steer", None)
        return cls(**data, steer=None if steer is None else Steer(**steer))
