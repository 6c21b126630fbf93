"""Two fitted methods at once: one that edits activations (or rewrites prompts), one that decodes.

``Combined(spare, cad)`` applies SpARE's edit and CAD's contrast to every prompt. With
``fallback=True`` and a gate, the first method acts where the gate fires (a conflict) and the
second only where it does not: "SpARE where the conflict probe fires, CAD elsewhere". The
``strength`` given to :meth:`steer` is the first part's; the second's is fixed at construction.
The benchmark builds these from its method labels (``spare+cad``, ``spare+cad+gate``,
``spare+gate+cad``) with each part's dev-tuned settings.
"""

from __future__ import annotations

from typing import Any

from transformers import LogitsProcessorList

from sparekit.errors import SparekitError
from sparekit.hooks import Site
from sparekit.models.loading import LoadedModel
from sparekit.steering.base import Direction, EditFn, SteeringMethod, SteeringPrompt


def _overrides(method: SteeringMethod, name: str) -> bool:
    return getattr(type(method), name) is not getattr(SteeringMethod, name)


class Combined(SteeringMethod):
    """``first``'s edits and prompt rewrites plus ``second``'s decoding-level steering."""

    kind = "combined"

    def __init__(self, first: SteeringMethod | None = None, second: SteeringMethod | None = None,
                 second_strength: float | None = None, fallback: bool = False):
        if first is not None and _overrides(first, "logits_processor"):
            raise SparekitError(f"combined: the first part ({first.kind}) must not steer at decoding time")
        if second is not None and (_overrides(second, "edits") or _overrides(second, "rewrite")):
            raise SparekitError(f"combined: the second part ({second.kind}) must steer at decoding time only",
                                "combine with cad, adacad or dola")
        self.first, self.second = first, second
        self.second_strength = second_strength
        self.fallback = fallback
        self.decode_where_gate_fires = not fallback

    def check_is_fitted(self) -> None:
        if self.first is None or self.second is None:
            raise SparekitError("combined: give both parts")
        self.first.check_is_fitted()
        self.second.check_is_fitted()

    def edits(self, lm: LoadedModel, toward: Direction, strength: float | None) -> list[tuple[Site, EditFn]]:
        return self.first.edits(lm, toward, self._strength(self.first, strength))

    def rewrite(self, prompts: list[SteeringPrompt], toward: Direction, strength: float | None) -> list[SteeringPrompt]:
        return self.first.rewrite(prompts, toward, self._strength(self.first, strength))

    def logits_processor(self, lm: LoadedModel, prompts: list[SteeringPrompt], toward: Direction,
                         strength: float | None) -> LogitsProcessorList | None:
        return self.second.logits_processor(lm, prompts, toward, self._strength(self.second, self.second_strength))

    @staticmethod
    def _strength(method: SteeringMethod, strength: float | None) -> float | None:
        return method.default_strength if strength is None else strength

    def get_params(self) -> dict[str, Any]:
        return {"first": self.first, "second": self.second, "second_strength": self.second_strength,
                "fallback": self.fallback}

    def save(self, path) -> None:
        raise SparekitError("a combined method is not saved as one", "save each part with its own .save()")
