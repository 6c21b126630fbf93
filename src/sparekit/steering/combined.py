"""Two fitted methods at once: one that edits activations (or rewrites prompts), one that decodes.

``Combined(spare, cad)`` applies SpARE's edit and CAD's contrast to every prompt. With
``fallback=True`` and a gate, the first method acts where the gate fires (a conflict) and the
second only where it does not: "SpARE where the conflict probe fires, CAD elsewhere". The
``strength`` given to :meth:`steer` is the first part's; the second's is fixed at construction.
The benchmark builds these from its method labels (``spare+cad``, ``spare+cad+gate``,
``spare+gate+cad``) with each part's dev-tuned settings, and exports them as fitted bundles: a saved
combination is its two parts' folders (``first/``, ``second/``) under a config naming the partner's
strength and the fallback, so :func:`sparekit.load` and ``sparekit steer --fitted`` read it as one method.
"""

from __future__ import annotations

from pathlib import Path

from transformers import LogitsProcessorList

from sparekit.artifacts import KINDS, Artifact, read_artifact, rebuild, save_artifact
from sparekit.errors import SparekitError
from sparekit.hooks import Site
from sparekit.models.loading import LoadedModel
from sparekit.steering.base import Direction, EditFn, SteeringMethod, SteeringPrompt
from sparekit.utils.config import finite_number

#: the subfolders of a saved combination
PARTS = ("first", "second")


def _overrides(method: SteeringMethod, name: str) -> bool:
    return getattr(type(method), name) is not getattr(SteeringMethod, name)


@KINDS.register("combined")  # a kind sparekit.load reads; not a method the benchmark's labels name
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

    def save(self, path: str | Path) -> Path:
        """Each part in its own folder, then the config (written last: a folder with one is complete)."""
        self.check_is_fitted()
        path = Path(path)
        for name in PARTS:
            getattr(self, name).save(path / name)
        return save_artifact(path, self.kind, {"second_strength": self.second_strength, "fallback": self.fallback},
                             {})

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> Combined:
        first, second = (rebuild(read_artifact(artifact.path / name), SteeringMethod) for name in PARTS)
        strength = artifact.params.get("second_strength")
        where = f"{artifact.path}: second_strength"
        return cls(first, second, None if strength is None else finite_number(strength, where),
                   bool(artifact.params.get("fallback", False)))
