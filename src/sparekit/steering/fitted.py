"""Fitted, dev-tuned steering methods on disk: what ``sparekit steer`` loads.

A folder per direction (``<root>/<toward>/``) holds the saved method
(``config.json`` + ``tensors.safetensors``) and ``tuned.json`` (strength, model hash,
the demonstrations to prepend to new questions). ``sparekit bench steer`` writes
them under ``<run>/fitted/<method>/`` and the run's calibrated conflict gate under
``<run>/gate_probe/``; the default model ships both (found through :mod:`sparekit.models.assets`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from sparekit.artifacts import read_artifact
from sparekit.errors import SparekitError
from sparekit.models.architecture import ModelInfo
from sparekit.steering.base import REGISTRY, Direction, SteeringMethod
from sparekit.steering.baselines.vector import VectorSteering
from sparekit.utils.config import finite_number
from sparekit.utils.io import read_json_object


def load_method(path: str | Path) -> SteeringMethod:
    """Rebuild a fitted method saved with :meth:`SteeringMethod.save` (strict; no pickle).

    A ``.gguf`` path is read as a llama.cpp / repeng control vector (a ``cvec`` method).
    """
    path = Path(path)
    if path.suffix == ".gguf":
        return VectorSteering.from_control_vector(path)
    artifact = read_artifact(path)
    return REGISTRY.lookup(artifact.kind, where=str(path)).from_artifact(artifact)


@dataclass
class FittedSteering:
    method: SteeringMethod
    strength: float | None
    demos: tuple[str, ...]


def shipped_root(label: str, model: ModelInfo | str = "default") -> Path:
    """Where the fitted method ``label`` shipped for ``model`` lives (:mod:`sparekit.models.assets`)."""
    from sparekit.models.assets import assets_for

    assets = assets_for(model)
    name = model.name if isinstance(model, ModelInfo) else model
    if assets is None or label not in assets.steering_labels():
        shipped = assets.steering_labels() if assets is not None else []
        close = difflib.get_close_matches(label, shipped, n=1)
        raise SparekitError(f"no shipped {label} for {name} (shipped: {', '.join(shipped) or 'nothing'})",
                            f"did you mean {close[0]!r}?" if close else
                            "fit one with `sparekit bench steer --model …` and pass --fitted <run>/fitted/<method>")
    return assets.steering(label)


def load_fitted(root: str | Path, toward: Direction, info: ModelInfo) -> FittedSteering:
    """Load ``<root>/<toward>`` and refuse a method tuned on another model."""
    folder = Path(root) / toward
    if not (folder / "config.json").is_file():
        raise SparekitError(f"no fitted method for direction {toward!r} in {root}",
                            "run `sparekit bench steer` and pass --fitted <run>/fitted/<method>")
    tuned = read_tuned(folder, required=True)
    if tuned.get("model_hash") not in (None, info.model_hash):
        raise SparekitError(f"{folder} was tuned on another model (hash {str(tuned['model_hash'])[:12]}…)",
                            "fit it for this model with `sparekit bench steer --model …`")
    return FittedSteering(load_method(folder), tuned.get("strength"), tuple(tuned.get("demos", ())))


def read_tuned(folder: Path, required: bool = False) -> dict:
    """``folder/tuned.json`` (``{}`` if absent and not ``required``), checked: a damaged file is one error
    naming it, not a traceback or a NaN strength further on."""
    path = folder / "tuned.json"
    if not path.is_file() and not required:
        return {}
    tuned = read_json_object(path)
    if tuned.get("strength") is not None:
        tuned["strength"] = finite_number(tuned["strength"], f"{path}: 'strength'")
    demos = tuned.get("demos", [])
    if not isinstance(demos, list) or not all(isinstance(d, str) for d in demos):
        raise SparekitError(f"{path}: 'demos' must be a list of strings", "the file is damaged; fit it again")
    return tuned


def load_gate(root: str | Path, info: ModelInfo):
    """The conflict gate that goes with the fitted method at ``root``: its run's, or the shipped one."""
    from sparekit.steering.gate import ProbeGate

    root = Path(root)
    candidates = [root.parent.parent / "gate_probe", root.parent / "gate"]
    folder = next((c for c in candidates if (c / "config.json").is_file()), None)
    if folder is None:
        raise SparekitError(f"no conflict gate next to {root}",
                            "gates come from `sparekit bench steer` runs with a +gate method")
    return ProbeGate.load(folder, model_hash=info.model_hash)
