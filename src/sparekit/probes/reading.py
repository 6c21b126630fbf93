"""Reading prompts before generating: the one place probes and gates turn hidden states into decisions.

:func:`read_prompts` runs the unsteered prompt pass once (stopped after the deepest site it
needs) and returns both the gate's decision per row and the probes' readings, so a
command that steers with a gate and reports the conflict probability pays one extra
prefix pass, not two. :meth:`ProbeSet.read` turns hidden states captured elsewhere (the
server reads them from the prompt pass that starts generation) into the same readings,
with the same keys, everywhere: ``conflict_probability``, ``conflict``,
``context_probability`` and ``predicted_source``, and, for probes saved with their training
statistics, ``in_distribution`` and ``distance`` (:mod:`sparekit.probes.ood`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from sparekit.hooks import Site
from sparekit.probes.linear import LinearProbe
from sparekit.utils.arrays import to_numpy

if TYPE_CHECKING:  # ProbeSet and read_states run inside the vLLM plugin, where transformers is not sparekit's
    from sparekit.hooks import Hooks
    from sparekit.models.loading import LoadedModel

#: what a reading says the model will answer from, by the source probe's p(context)
SOURCES = ("context", "memory")


class SiteGate(Protocol):
    """A gate decides per row from the hidden state at its site (``sparekit.steering.gate.ProbeGate``)."""

    site: Site

    def fire(self, h: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class ProbeSet:
    """The conflict probe (required) and the source probe (optional) of one model, and where they came from."""

    probes: dict[str, LinearProbe]
    folder: Path | None = None

    @property
    def sites(self) -> dict[str, Site]:
        return {target: Site.parse(probe.site) for target, probe in self.probes.items()}

    def read(self, states: dict[Site, torch.Tensor]) -> list[dict]:
        """One reading per row of the last-token ``states`` (``[batch, d_model]`` at each probe's site)."""
        sites = self.sites
        p_conflict = self._proba("conflict", states[sites["conflict"]])
        p_context = self._proba("source", states[sites["source"]]) if "source" in self.probes else None
        readings = []
        for row, conflict in enumerate(p_conflict):
            context = None if p_context is None else p_context[row]
            readings.append({"detector": "probe", "conflict_probability": conflict, "conflict": conflict > 0.5,
                             "context_probability": context,
                             "predicted_source": None if context is None else SOURCES[0 if context > 0.5 else 1]})
        for reading, flag in zip(readings, self._in_distribution(states[sites["conflict"]])):
            reading.update(flag)
        return readings

    def _in_distribution(self, h: torch.Tensor) -> list[dict]:
        """Per row ``in_distribution`` and its ``distance`` from the conflict probe's training rows; empty
        dicts for a probe saved without the statistics (older folders)."""
        probe = self.probes["conflict"]
        distance = probe.distance(to_numpy(h.float()))
        if distance is None:
            return [{} for _ in range(len(h))]
        return [{"in_distribution": bool(d <= probe.distance_threshold), "distance": float(d)} for d in distance]

    def _proba(self, target: str, h: torch.Tensor) -> list[float]:
        return [float(p) for p in self.probes[target].predict_proba(to_numpy(h.float()))[:, 1]]


@dataclass(frozen=True)
class Reading:
    """What one unsteered prompt pass decided: the gate's rows (``None`` without a gate) and the probes'
    readings (``None`` without probes)."""

    fired: torch.Tensor | None
    probes: list[dict] | None


def reading_sites(gate: SiteGate | None = None, probes: ProbeSet | None = None) -> list[Site]:
    """The sites a gate and probes read (the last prompt token of each)."""
    return sorted({*([gate.site] if gate is not None else []), *(probes.sites.values() if probes is not None else [])})


def capture_reading_sites(hooks: Hooks, gate: SiteGate | None = None, probes: ProbeSet | None = None) -> Hooks:
    """Declare on ``hooks`` the captures a gate and probes read (float32, last prompt token, prompt pass)."""
    for site in reading_sites(gate, probes):
        hooks.capture(site, dtype=torch.float32)
    return hooks


def read_captures(hooks: Hooks, gate: SiteGate | None = None, probes: ProbeSet | None = None) -> Reading:
    """The :class:`Reading` of the captures :func:`capture_reading_sites` declared, once the prompt pass ran."""
    return read_states({site: hooks[site] for site in reading_sites(gate, probes)}, gate, probes)


def read_states(states: dict[Site, torch.Tensor], gate: SiteGate | None = None,
                probes: ProbeSet | None = None) -> Reading:
    """A :class:`Reading` from last-token states captured elsewhere (e.g. on the prompt pass of a generation)."""
    return Reading(None if gate is None else gate.fire(states[gate.site]).bool(),
                   None if probes is None else probes.read(states))


def read_prompts(lm: LoadedModel, texts: Sequence[str], gate: SiteGate | None = None,
                 probes: ProbeSet | None = None) -> Reading:
    """The gate's decisions and the probes' readings of ``texts``, from one forward stopped at the deepest site."""
    from sparekit.activations.last_token import last_token_states  # deliberately lazy: it needs transformers

    sites = reading_sites(gate, probes)
    if not sites:
        return Reading(None, None)
    return read_states(last_token_states(lm, list(texts), sites), gate, probes)
