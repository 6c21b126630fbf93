"""``sparekit export control-vector``: a fitted method as a llama.cpp control vector."""

from __future__ import annotations

import click

from sparekit.cli.common import emit, json_option
from sparekit.cli.config import config_options
from sparekit.commands.export import ExportCommand


@click.group()
def export() -> None:
    """Write fitted methods in other tools' formats."""


def render(r: dict) -> str:
    """What was written, the bundle's other direction and, for a stand-in, the approximation's note."""
    return (f"wrote {r['out']}: {r['kind']} toward {r['toward']} at strength {r['strength']}, layers {r['layers']}"
            + "".join(f"\n(METHOD_DIR also holds toward {d}: --toward {d})" for d in r["other_directions"])
            + ("" if r["exact"] else f"\nAPPROXIMATION: {r['note']}"))


@export.command("control-vector")
@config_options(ExportCommand)
@json_option
def control_vector(config: ExportCommand, as_json: bool) -> None:
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
    emit(config.run(), as_json, render)
