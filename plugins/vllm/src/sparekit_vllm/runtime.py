"""The reads and edits of one vLLM step, at the last prompt token of the requests that ask for them.

:meth:`Runtime.begin` takes the step's :class:`~sparekit_vllm.rows.LastToken` s with their
:class:`~sparekit_vllm.options.Plan`; the worker then calls :meth:`Runtime.on_layer` with each hooked
decoder layer's residual stream, through ``read(index)`` / ``write(index, values)`` so that the runtime
never sees how an engine stores it. Every other token of the batch is left exactly as it was. Readings
(probes: :class:`~sparekit.probes.reading.ProbeSet`; gates: :func:`~sparekit.probes.reading.read_states`)
wait under each plan's key until the API server takes them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from sparekit.probes.reading import read_states
from sparekit.serve.options import RowSteer

from sparekit_vllm.bundle import Bundle, EditFn
from sparekit_vllm.options import Plan
from sparekit_vllm.rows import LastToken

Read = Callable[[torch.Tensor], torch.Tensor]
Write = Callable[[torch.Tensor, torch.Tensor], None]


@dataclass
class _Pending:
    """One request's readings being collected: the layers still to read, and the states read so far."""

    plan: Plan
    index: int
    layers: set[int]
    states: dict


class Runtime:
    def __init__(self, bundle: Bundle, keep: int = 4096):
        self.bundle, self.keep = bundle, keep
        self.readings: OrderedDict[str, dict] = OrderedDict()
        self._edits: dict[int, list[tuple[torch.Tensor, EditFn]]] = {}
        self._pending: list[_Pending] = []

    @property
    def layers(self) -> list[int]:
        """Every layer any loaded probe, gate or method acts on (the worker hooks these)."""
        sites = {s.layer for s in self.bundle.probes.sites.values()} if self.bundle.probes else set()
        sites |= {g.site.layer for g in self.bundle.gates.values()}
        sites |= {layer for per in self.bundle.methods.values() for f in per.values() for layer in f.layers}
        return sorted(sites)

    @property
    def active(self) -> bool:
        return bool(self._edits or self._pending)

    def begin(self, tokens: Sequence[tuple[LastToken, Plan]]) -> None:
        """Plan a step: group the edits by (method, direction, strength) per layer, list the readings."""
        groups: dict[RowSteer, list[int]] = {}
        self._pending = []
        for token, plan in tokens:
            if plan.steer is not None:
                groups.setdefault(plan.steer, []).append(token.index)
            sites = self._reading_sites(plan)
            if sites:
                self._pending.append(_Pending(plan, token.index, {s.layer for s in sites}, {}))
        self._edits = {}
        for steer, index in groups.items():
            for layer, fn in self.bundle.edits(steer).items():
                self._edits.setdefault(layer, []).append((torch.tensor(index, dtype=torch.long), fn))

    def on_layer(self, layer: int, read: Read, write: Write) -> None:
        """After decoder layer ``layer``: take the readings there, then apply the edits there."""
        for pending in self._pending:
            if layer in pending.layers:
                for site in self._reading_sites(pending.plan):
                    if site.layer == layer:
                        pending.states[site] = read(torch.tensor([pending.index])).detach().float()
                pending.layers.discard(layer)
                if not pending.layers:
                    self._finish(pending)
        for index, fn in self._edits.get(layer, ()):
            write(index, fn(read(index)))

    def end(self) -> None:
        """The step is over (a forward cut short leaves no half-made plan for the next)."""
        self._edits, self._pending = {}, []

    def take(self, key: str) -> dict | None:
        """The readings kept under ``key`` (once: they are removed)."""
        return self.readings.pop(key, None)

    def _reading_sites(self, plan: Plan) -> list:
        sites = list(self.bundle.probes.sites.values()) if plan.detect and self.bundle.probes else []
        return sites + ([self.bundle.gates[plan.gate].site] if plan.gate in self.bundle.gates else [])

    def _finish(self, pending: _Pending) -> None:
        plan = pending.plan
        reading = read_states(pending.states, self.bundle.gates.get(plan.gate),
                              self.bundle.probes if plan.detect else None)
        self.readings[plan.key] = {"probes": None if reading.probes is None else reading.probes[0],
                                   "fired": None if reading.fired is None else bool(reading.fired[0])}
        while len(self.readings) > self.keep:  # nobody collected the oldest: a client that went away
            self.readings.popitem(last=False)
