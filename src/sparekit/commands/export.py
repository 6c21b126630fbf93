"""``sparekit export control-vector``: a fitted method as a llama.cpp control vector."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparekit.commands.steer import TOWARD
from sparekit.errors import SparekitError
from sparekit.utils.config import finite_number, option


def tuned_method(method_dir: Path, toward: str | None) -> tuple[Any, str, float | None, list[str]]:
    """``(method, direction, tuned strength, the bundle's other directions)`` for METHOD_DIR: a fitted bundle
    gives ``toward``'s method (by default context's, as --toward documents), a bundle's direction folder
    its own method and strength, a plain saved method no tuned strength."""
    # deliberately lazy: the steering methods import torch
    from sparekit.saved import load
    from sparekit.steering import FittedBundle, SteeringMethod  # lazy, as above
    from sparekit.steering.fitted import is_bundle  # lazy, as above

    looks_fitted = any((method_dir / side).is_dir() for side in TOWARD)
    if not (method_dir / "config.json").is_file() and not looks_fitted:
        raise SparekitError(f"no saved method in {method_dir}",
                            "pass a folder with config.json: a saved method or a fitted bundle")
    in_bundle = method_dir.name in TOWARD and is_bundle(method_dir.parent)
    if not in_bundle and not looks_fitted and not is_bundle(method_dir):
        return load(method_dir, expect=SteeringMethod), toward or "context", None, []
    bundle = FittedBundle.load(method_dir.parent if in_bundle else method_dir)
    sides = sorted(bundle.directions)  # context first
    own = method_dir.name if in_bundle else toward or sides[0]
    fitted = bundle[own]  # type: ignore[index]
    return fitted.method, toward or own, fitted.strength, [] if in_bundle else [d for d in sides if d != own]


@dataclass(frozen=True)
class ExportCommand:
    """The fitted method in ``method_dir`` written as a llama.cpp control-vector GGUF at ``out``."""

    method_dir: str = option(argument=True, help="A fitted bundle, one of its direction folders or a saved method.")
    out: str = option(metavar="FILE", help="The .gguf to write.")
    toward: str | None = option(None, choices=TOWARD,
                                help="Direction to bake in (default: the one METHOD_DIR was tuned for; of a fitted "
                                     "bundle holding both, context).")
    strength: float | None = option(None, help="Strength to bake in (default: METHOD_DIR's tuned strength, else the "
                                               "method's default).")
    model_hint: str = option("unknown", help="controlvector.model_hint: the model family the vector was fitted on "
                                             "(e.g. gemma3).")

    def __post_init__(self) -> None:
        if not Path(self.method_dir).is_dir():
            raise SparekitError(f"METHOD_DIR {self.method_dir!r} is not a folder",
                                "pass a fitted bundle, one of its direction folders or a saved method")
        if Path(self.out).is_dir():
            raise SparekitError(f"--out {self.out!r} is a folder", "name the .gguf file to write")
        if self.strength is not None:
            finite_number(self.strength, "--strength")

    def run(self) -> dict:
        """What was written: the file, the method's kind, direction, strength and layers, and whether it is exact."""
        from sparekit.steering.control_vector import export_control_vector  # deliberately lazy: it imports torch

        method, toward, tuned, others = tuned_method(Path(self.method_dir), self.toward)
        strength = self.strength if self.strength is not None else tuned if tuned is not None \
            else method.default_strength
        if strength is None:
            raise SparekitError(f"{method.kind} has no strength", "pass --strength")
        cvec = export_control_vector(method, Path(self.out), toward, float(strength), self.model_hint)
        return {"out": self.out, "kind": method.kind, "toward": toward, "strength": float(strength),
                "layers": sorted(cvec.vectors), "exact": cvec.exact, "note": cvec.note, "other_directions": others}
