"""``sparekit export control-vector``: a fitted method as a llama.cpp control vector."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sparekit.cli.common import emit, finite, json_option


@click.group()
def export() -> None:
    """Write fitted methods in other tools' formats."""


def _tuned_method(method_dir: Path, toward: str | None) -> tuple[Any, str, float | None, list[str]]:
    """``(method, direction, tuned strength, the bundle's other directions)`` for METHOD_DIR: a fitted bundle
    gives ``toward``'s method (by default context's, as --toward documents), a bundle's direction folder
    its own method and strength, a plain saved method no tuned strength."""
    from sparekit.errors import SparekitError
    from sparekit.saved import load
    from sparekit.steering import DIRECTIONS, FittedBundle, SteeringMethod
    from sparekit.steering.fitted import is_bundle

    looks_fitted = any((method_dir / toward).is_dir() for toward in DIRECTIONS)
    if not (method_dir / "config.json").is_file() and not looks_fitted:
        raise SparekitError(f"no saved method in {method_dir}",
                            "pass a folder with config.json: a saved method or a fitted bundle")
    in_bundle = method_dir.name in DIRECTIONS and is_bundle(method_dir.parent)
    if not in_bundle and not looks_fitted and not is_bundle(method_dir):
        return load(method_dir, expect=SteeringMethod), toward or "context", None, []
    bundle = FittedBundle.load(method_dir.parent if in_bundle else method_dir)
    sides = sorted(bundle.directions)  # context first
    own = method_dir.name if in_bundle else toward or sides[0]
    fitted = bundle[own]  # type: ignore[index]
    return fitted.method, toward or own, fitted.strength, [] if in_bundle else [d for d in sides if d != own]


@export.command("control-vector")
@click.argument("method_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", "out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The .gguf to write.")
@click.option("--toward", type=click.Choice(["memory", "context"]), default=None,
              help="Direction to bake in (default: the one METHOD_DIR was tuned for; of a fitted bundle holding "
                   "both, context).")
@click.option("--strength", type=float, default=None, callback=finite,
              help="Strength to bake in (default: METHOD_DIR's tuned strength, else the method's default).")
@click.option("--model-hint", default="unknown", show_default=True,
              help="controlvector.model_hint: the model family the vector was fitted on (e.g. gemma3).")
@json_option
def control_vector(method_dir: Path, out: Path, toward: str | None, strength: float | None, model_hint: str,
                   as_json: bool) -> None:
    """Write the fitted method in METHOD_DIR as a llama.cpp control-vector GGUF.

    \b
    METHOD_DIR: a fitted bundle (<run>/fitted/actadd), one of its direction folders
    (<run>/fitted/actadd/memory) or any saved method (config.json + tensors.safetensors).
    actadd and cvec export exactly; knob and spare export a fixed stand-in for their
    input-dependent edit (the file records sparekit.exact = false).
    Direction.N is added to the output of block N in llama.cpp, sparekit's layer N; llama.cpp adds
    it at every token, sparekit at the last prompt token only. Use it with
      llama-cli -m model.gguf --control-vector-scaled OUT 1.0
    """
    from sparekit.errors import SparekitError
    from sparekit.steering.control_vector import export_control_vector

    method, toward, tuned, others = _tuned_method(method_dir, toward)
    strength = strength if strength is not None else tuned if tuned is not None else method.default_strength
    if strength is None:
        raise SparekitError(f"{method.kind} has no strength", "pass --strength")
    cvec = export_control_vector(method, out, toward, float(strength), model_hint)  # type: ignore[arg-type]
    result = {"out": str(out), "kind": method.kind, "toward": toward, "strength": float(strength),
              "layers": sorted(cvec.vectors), "exact": cvec.exact, "note": cvec.note, "other_directions": others}
    emit(result, as_json, lambda r: (
        f"wrote {r['out']}: {r['kind']} toward {r['toward']} at strength {r['strength']}, layers {r['layers']}"
        + "".join(f"\n(METHOD_DIR also holds toward {d}: --toward {d})" for d in r["other_directions"])
        + ("" if r["exact"] else f"\nAPPROXIMATION: {r['note']}")))
