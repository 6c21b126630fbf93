"""``sparekit export control-vector``: a fitted method as a llama.cpp control vector."""

from __future__ import annotations

from pathlib import Path

import click

from sparekit.cli.common import emit, finite, json_option


@click.group()
def export() -> None:
    """Write fitted methods in other tools' formats."""


def _method_folder(method_dir: Path, toward: str | None) -> tuple[Path, str | None, list[str]]:
    """``(saved method folder, direction, the root's other directions)``: a fitted root holding one folder
    per direction gives ``toward``'s, by default context's (the default --toward documents); the output names the other."""
    if (method_dir / "config.json").is_file():
        return method_dir, toward, []
    sides = [d for d in ("context", "memory") if (method_dir / d / "config.json").is_file()]
    toward = toward or (sides[0] if sides else None)
    return (method_dir / toward if toward else method_dir), toward, [d for d in sides if d != toward]


@export.command("control-vector")
@click.argument("method_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", "out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The .gguf to write.")
@click.option("--toward", type=click.Choice(["memory", "context"]), default=None,
              help="Direction to bake in (default: the one METHOD_DIR was tuned for; of a fitted root holding "
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
    METHOD_DIR: a saved method (config.json + tensors.safetensors), e.g. <run>/fitted/actadd/memory,
    or its parent holding one folder per direction. actadd and cvec export exactly; knob and spare
    export a fixed stand-in for their input-dependent edit (the file records sparekit.exact = false).
    Direction.N is added to the output of block N in llama.cpp, sparekit's layer N; llama.cpp adds
    it at every token, sparekit at the last prompt token only. Use it with
      llama-cli -m model.gguf --control-vector-scaled OUT 1.0
    """
    from sparekit.errors import SparekitError
    from sparekit.steering import load_method
    from sparekit.steering.control_vector import export_control_vector
    from sparekit.steering.fitted import read_tuned

    method_dir, toward, others = _method_folder(method_dir, toward)
    if not (method_dir / "config.json").is_file():
        raise SparekitError(f"no saved method in {method_dir}",
                            "pass a folder with config.json, or a fitted root with --toward")
    tuned = read_tuned(method_dir)
    method = load_method(method_dir)
    toward = toward or tuned.get("toward", "context")
    strength = strength if strength is not None else tuned.get("strength", method.default_strength)
    if strength is None:
        raise SparekitError(f"{method.kind} has no strength", "pass --strength")
    cvec = export_control_vector(method, out, toward, float(strength), model_hint)  # type: ignore[arg-type]
    result = {"out": str(out), "kind": method.kind, "toward": toward, "strength": float(strength),
              "layers": sorted(cvec.vectors), "exact": cvec.exact, "note": cvec.note, "other_directions": others}
    emit(result, as_json, lambda r: (
        f"wrote {r['out']}: {r['kind']} toward {r['toward']} at strength {r['strength']}, layers {r['layers']}"
        + "".join(f"\n(METHOD_DIR also holds toward {d}: --toward {d})" for d in r["other_directions"])
        + ("" if r["exact"] else f"\nAPPROXIMATION: {r['note']}")))
