"""Fitted, dev-tuned steering on disk: the one layout ``sparekit steer``, ``serve``, ``export`` and the
shipped assets read, and ``sparekit bench steer`` writes (``<run>/fitted/<label>/``).

A fitted bundle is one folder per method label::

    config.json         kind "fitted_steering": the label, the model's hash, the demonstrations to
                        prepend to new questions and, per direction, the dev-tuned parameters,
                        strength and dev EM
    memory/ context/    the fitted method per direction (a saved method, :mod:`sparekit.artifacts`)
    gate/               the run's calibrated conflict gate, if the run fitted one (a gate that fits
                        nothing, such as the recall gate, is only named: config.json ``gate``)

:meth:`FittedBundle.save` writes it in a temporary folder swapped in whole, so a reader never sees
half a bundle; :func:`sparekit.load` (or :meth:`FittedBundle.load`) reads it back. The default
model ships one (found through :mod:`sparekit.models.assets`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparekit.artifacts import CONFIG, KINDS, Artifact, read_artifact, rebuild, refuse_other_model, save_artifact
from sparekit.errors import SparekitError
from sparekit.models.architecture import ModelInfo
from sparekit.models.assets import assets_for
from sparekit.steering.base import DIRECTIONS, Direction, Gate, SteeringMethod
from sparekit.steering.gate import ProbeGate, training_free_gate
from sparekit.utils.config import finite_number
from sparekit.utils.io import atomic_folder, read_json_object

KIND = "fitted_steering"
_FIT_HINT = "fit one with `sparekit bench steer --model …` and pass --fitted <run>/fitted/<method>"


@dataclass
class FittedSteering:
    """One direction of a bundle: the fitted method and what dev chose for it."""

    method: SteeringMethod
    strength: float | None
    demos: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    dev_em: float | None = None


@KINDS.register(KIND)
@dataclass
class FittedBundle:
    """A method label's fitted methods per direction, their tuned settings and, optionally, its gate."""

    label: str
    directions: dict[Direction, FittedSteering]
    demos: tuple[str, ...] = ()
    model_hash: str | None = None
    gate: Gate | None = None
    folder: Path | None = None

    def __getitem__(self, toward: Direction) -> FittedSteering:
        if toward not in self.directions:
            raise SparekitError(f"no fitted method for direction {toward!r} in {self.folder or self.label}",
                                f"it holds {', '.join(self.directions) or 'none'}; {_FIT_HINT}")
        return self.directions[toward]

    def require_gate(self) -> Gate:
        """The bundle's conflict gate, or one error saying where gates come from."""
        if self.gate is None:
            raise SparekitError(f"no conflict gate in {self.folder or self.label}",
                                "gates come from `sparekit bench steer` runs with a +gate method")
        return self.gate

    def save(self, folder: str | Path) -> Path:
        """Write the bundle to ``folder`` (replacing what is there, atomically as a whole)."""
        tuned = {t: {"params": f.params, "strength": f.strength, "dev_em": f.dev_em}
                 for t, f in self.directions.items()}
        params = {"label": self.label, "model_hash": self.model_hash, "demos": list(self.demos), "tuned": tuned}
        if self.gate is not None and not isinstance(self.gate, ProbeGate):
            params["gate"] = self.gate.name  # it fits nothing: its name is all there is to save
        with atomic_folder(folder) as tmp:
            for toward, fitted in self.directions.items():
                fitted.method.save(tmp / toward)
            if isinstance(self.gate, ProbeGate):
                self.gate.save(tmp / "gate")
            save_artifact(tmp, KIND, params, {})
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, model_hash: str | None = None) -> FittedBundle:
        """Read a bundle; ``model_hash``: refuse one tuned on another model. An older layout (``tuned.json``
        per direction) or another kind of folder is one error line."""
        folder = Path(folder)
        if not (folder / CONFIG).is_file():
            if any((folder / t / "tuned.json").is_file() for t in DIRECTIONS):
                raise SparekitError(f"{folder} is a fitted folder of an older sparekit (tuned.json per direction)",
                                    f"rewrite it: python3 scripts/migrate_artifacts.py {folder}")
            raise SparekitError(f"no fitted method in {folder} (missing {CONFIG})", _FIT_HINT)
        return cls.from_artifact(read_artifact(folder, KIND), model_hash=model_hash)

    @classmethod
    def from_artifact(cls, artifact: Artifact, model_hash: str | None = None) -> FittedBundle:
        """What :func:`sparekit.load` calls: the settings checked, then each direction's method and the gate."""
        path, params = artifact.path, artifact.params
        demos, tuned = _checked_settings(path / CONFIG, params)
        refuse_other_model(path, params.get("model_hash"), model_hash)
        directions = {t: FittedSteering(rebuild(read_artifact(path / t), SteeringMethod), setting.get("strength"),
                                        demos, dict(setting.get("params") or {}), setting.get("dev_em"))
                      for t, setting in tuned.items()}
        gate = ProbeGate.load(path / "gate", model_hash) if (path / "gate" / CONFIG).is_file() \
            else None if params.get("gate") is None else training_free_gate(params["gate"])
        return cls(str(params.get("label", path.name)), directions, demos, params.get("model_hash"), gate, path)


def _checked_settings(config: Path, params: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, dict]]:
    """The bundle's demonstrations and per-direction settings, checked: a damaged config is one error
    naming it, not a traceback or a NaN strength further on."""
    demos, tuned = params.get("demos", ()), params.get("tuned")
    if not isinstance(demos, list | tuple) or not all(isinstance(d, str) for d in demos):
        raise SparekitError(f"{config}: 'demos' must be a list of strings", "the file is damaged; fit it again")
    if not isinstance(tuned, dict) or not tuned or not set(tuned) <= set(DIRECTIONS) \
            or not all(isinstance(s, dict) for s in tuned.values()):
        raise SparekitError(f"{config}: 'tuned' must map memory and/or context to their settings",
                            "the file is damaged; fit it again")
    for toward, setting in tuned.items():
        if setting.get("strength") is not None:
            setting["strength"] = finite_number(setting["strength"], f"{config}: {toward} 'strength'")
    return tuple(demos), tuned


def is_bundle(folder: Path) -> bool:
    """Whether ``folder`` holds a fitted bundle (its config names the kind), without reading the rest."""
    return (folder / CONFIG).is_file() and read_json_object(folder / CONFIG).get("kind") == KIND


def shipped_root(label: str, model: ModelInfo | str = "default") -> Path:
    """Where the fitted bundle ``label`` shipped for ``model`` lives (:mod:`sparekit.models.assets`)."""
    assets = assets_for(model)
    name = model.name if isinstance(model, ModelInfo) else model
    if assets is None or label not in assets.steering_labels():
        shipped = assets.steering_labels() if assets is not None else []
        close = difflib.get_close_matches(label, shipped, n=1)
        raise SparekitError(f"no shipped {label} for {name} (shipped: {', '.join(shipped) or 'nothing'})",
                            f"did you mean {close[0]!r}?" if close else _FIT_HINT)
    return assets.steering(label)


__all__ = ["FittedBundle", "FittedSteering", "is_bundle", "shipped_root"]
