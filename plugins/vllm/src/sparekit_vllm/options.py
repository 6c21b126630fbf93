"""A request's sparekit options on vLLM: checked by sparekit's own validator, carried to the workers as a plan.

The ``{"sparekit": {"detect": …, "steer": {…}}}`` body key, its checks and its 400s are
:mod:`sparekit.serve.options`, the same module the built-in engine of ``sparekit serve`` uses (one schema,
one validator, the same messages). A bad value is an :class:`~sparekit.serve.options.OptionError` raised in
the API server before the request reaches the engine, so nothing else in a batch is affected. What reaches
a worker is a :class:`Plan` (what to read and edit at the request's last prompt token), carried as one
JSON string in ``SamplingParams.extra_args`` (``vllm_xargs``: vLLM's per-request extension field).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from sparekit.serve.options import Capabilities, Options, RowSteer

#: the ``extra_args`` key a :class:`Plan` travels under
PLAN_KEY = "sparekit_plan"
DIRECTIONS = ("context", "memory")


@dataclass(frozen=True)
class Served(Capabilities):
    """The capabilities, and the layers that decide whether a reading must come from an unsteered pass."""

    probe_layer: int | None = None  # the deepest probe's layer
    first_edit_layer: dict[str, int] = field(default_factory=dict)

    def reads_first(self, options: Options) -> bool:
        """Whether the request needs an unsteered pass first: a gate decides before the edits, and detection
        reads the unsteered prompt when an edit sits at or below the probe (as the built-in engine does)."""
        steer = options.steer
        if steer is None:
            return False
        return steer.gate or (options.detect and self.first_edit_layer[steer.method] <= (self.probe_layer or 0))


@dataclass(frozen=True)
class Plan:
    """What a worker does at one request's last prompt token: read the probes, read a method's gate,
    apply a steering edit; the readings are kept under ``key`` for the API server to collect."""

    key: str
    detect: bool = False
    gate: str | None = None  # the method whose gate to read
    steer: RowSteer | None = None

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
        return cls(**data, steer=None if steer is None else RowSteer(**steer))
