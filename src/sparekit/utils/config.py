"""Command configs: dataclasses whose fields carry their own command-line help.

Each command (eval, capture, probe, SAE training, the steering benchmark, detect, steer, demo, serve …)
is one dataclass with a ``run()``; ``sparekit.cli.config.config_options`` turns its fields into
click options. A field's ``metadata`` holds ``help`` and, where the default does not fit,
``flag`` (the option name, ``--gate/--no-gate`` for a switch), ``short``, ``choices``, ``min``/``max``
(with ``min_open``/``max_open`` to exclude the bound), ``multiple`` (a repeatable option; ``distinct=False``
lets a value repeat), ``show_default`` (text shown instead of the default), ``metavar`` (the value's name
in ``--help``: DIR, FILE), ``argument=True`` (positional) and ``cli=False`` (not an option). A field
without a default is a required option.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from pathlib import Path
from typing import Any

from sparekit.errors import SparekitError


def parse_list(text: str, kind: type = str, name: str = "list") -> tuple:
    """``"4, 8,12"`` -> ``(4, 8, 12)``: the one reading of a comma-separated option (blank items skipped)."""
    try:
        return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        example = "a,b" if kind is str else "1,2"
        raise SparekitError(f"cannot parse {name} {text!r}",
                            f"write comma-separated {kind.__name__}s, e.g. {example}") from None


def finite_number(value: Any, name: str) -> float:
    """``value`` as a float if it is a real, finite number: a NaN or infinite strength would steer every
    answer to nothing (or export a vector of NaNs) without an error."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SparekitError(f"{name} must be a finite number, got {value!r}", "give a number such as 4.0")
    return float(value)


def parse_layers(text: str, n_layers: int) -> list[int]:
    """``all``, ``6``, ``4,8,12`` or ``4-8`` (inclusive) -> sorted layer indices."""
    if text.strip() == "all":
        return list(range(n_layers))
    layers: set[int] = set()
    try:
        for part in text.split(","):
            start, _, end = part.strip().partition("-")
            first, last = int(start), int(end or start)
            if last < first:
                raise SparekitError(f"layer range {part.strip()!r} is reversed", f"write {last}-{first}")
            layers.update(range(first, last + 1))
    except ValueError:
        raise SparekitError(f"cannot parse layers {text!r}", "write all, 6, 4,8,12 or 4-8") from None
    if not layers or min(layers) < 0 or max(layers) >= n_layers:
        raise SparekitError(f"layers {text!r} are out of range", f"this model has layers 0..{n_layers - 1}")
    return sorted(layers)


def check_components(components: tuple[str, ...] | list[str]) -> list[str]:
    """The residual-stream components to read (``resid``, ``attn``, ``mlp``), checked."""
    bad = [c for c in components if c not in ("resid", "attn", "mlp")]
    if bad or not components:
        raise SparekitError(f"unknown component(s) {', '.join(bad) or repr(components)}",
                            "use resid, attn, mlp (comma-separated)")
    return list(components)


def option(default: Any = dataclasses.MISSING, *, help: str, **cli: Any) -> Any:  # noqa: A002 (click's name)
    """A config field with its command-line help (and option settings, see the module docstring)."""
    if isinstance(default, tuple | list | dict):
        frozen = default
        return dataclasses.field(default_factory=lambda: type(frozen)(frozen), metadata={"help": help, **cli})
    return dataclasses.field(default=default, metadata={"help": help, **cli})


MODEL_HELP = "'default' (Gemma 3 270M), 'smollm2-135m', a hub id, a local folder or a .gguf file."
DATASET_HELP = ("'default', 'default-passages', 'broad', 'broad-passages', 'nqswap' or a .jsonl/.jsonl.gz path in "
                "the NQ-Swap schema.")
DTYPE_HELP = "float32, bfloat16 or float16."
DEVICE_HELP = "cpu, cuda, cuda:1 … (default: cuda if available)."
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
DEVICE_MAP_HELP = "Spread the model's blocks over GPUs, CPU and disk with accelerate (replaces --device)."


def model_field() -> Any:
    """``-m/--model`` (the command adds ``--no-verify``)."""
    return option("default", short="-m", help=MODEL_HELP)


def device_field() -> Any:
    """``--device``: where the model runs (never part of a run's identity)."""
    return option(None, help=DEVICE_HELP)


def device_map_field() -> Any:
    """``--device-map``: the model spread over devices with accelerate."""
    return option(None, choices=DEVICE_MAPS, help=DEVICE_MAP_HELP)


def config_dict(config: Any) -> dict:
    """``config`` as the JSON object ``--config`` reads back (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def read_config_file(path: str | os.PathLike, cls: type) -> dict:
    """The keys of a ``--config`` file (JSON, or TOML by its suffix), checked against ``cls``'s fields.

    Keys may be written with ``-`` or ``_``; an unknown key is refused with the valid ones listed.
    """
    path = Path(path)
    if not path.is_file():
        raise SparekitError(f"missing config file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SparekitError(f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from None
    if not isinstance(values, dict):
        raise SparekitError(f"{path} must hold one object of option names and values")
    names = {f.name for f in dataclasses.fields(cls)}
    values = {key.replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(values) - names)
    if unknown:
        raise SparekitError(f"{path}: unknown key(s) {', '.join(unknown)}", f"valid keys: {', '.join(sorted(names))}")
    return values
