"""One on-disk format for every fitted object: probes, gates, steering methods.

A saved probe, conflict gate or steering method is a folder with

- ``config.json``: ``kind`` (which class reads it), ``format_version``, ``sparekit_version``,
  ``params`` (the constructor arguments) and ``state`` (learned JSON values);
- ``tensors.safetensors``: the learned tensors (never pickle).

Each class registers its ``kind`` in :data:`KINDS`; :func:`rebuild` is the one place a folder's ``kind``
picks its class. :func:`sparekit.load` (in :mod:`sparekit.saved`, above every such class) is the public
loader; a fitted bundle (:mod:`sparekit.steering.fitted`) rebuilds its parts here. Folders written before format 2
(``format_version`` 1) are still read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sparekit import __version__
from sparekit.errors import SparekitError
from sparekit.utils.io import (DAMAGED_FILE_ERRORS, atomic_path, atomic_write_json, check_readable, damaged_file,
                               read_json)
from sparekit.utils.registry import Registry

FORMAT_VERSION = 2
CONFIG, TENSORS = "config.json", "tensors.safetensors"
#: kind -> class with a ``from_artifact(artifact, **kwargs)`` classmethod.
KINDS: Registry = Registry("saved object kind", "kind")


def header(kind: str, format_version: int = FORMAT_VERSION) -> dict[str, Any]:
    """The three keys every sparekit file starts with."""
    return {"kind": kind, "format_version": format_version, "sparekit_version": __version__}


def check_header(config: Any, path: str | Path, kind: str | None = None,
                 versions: tuple[int, ...] = (FORMAT_VERSION,)) -> int:
    """Refuse a file of another kind or an unknown format version; return its version."""
    if not isinstance(config, dict):
        raise SparekitError(f"{path} must hold a JSON object, got {type(config).__name__}")
    if kind is not None and config.get("kind") != kind:
        raise SparekitError(f"{path} holds a {config.get('kind')!r}, not a {kind!r}")
    version = config.get("format_version")
    if version not in versions:
        raise SparekitError(f"{path}: unsupported format version {version!r}",
                            f"this sparekit reads {', '.join(map(str, versions))}; save it again")
    return int(version)


def refuse_other_model(path: str | Path, recorded: Any, model_hash: str | None,
                       hint: str = "fit it for this model with `sparekit bench steer --model …`") -> None:
    """Refuse a fitted bundle tuned on another model than ``model_hash`` (either unknown: accepted); the
    built-in engine and the vLLM plugin (which imports no transformers) both check here."""
    if model_hash is not None and recorded not in (None, model_hash):
        raise SparekitError(f"{path} was tuned on another model (hash {str(recorded)[:12]}…, "
                            f"this model {model_hash[:12]}…)", hint)


@dataclass
class Artifact:
    """A saved object as read from its folder, before its class rebuilds it."""

    path: Path
    kind: str
    params: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def save_artifact(path: str | Path, kind: str, params: dict[str, Any], tensors: dict[str, torch.Tensor],
                  state: dict[str, Any] | None = None) -> Path:
    """Write ``tensors.safetensors`` then ``config.json`` (the config last: a folder with one is complete)."""
    path = Path(path)
    with atomic_path(path / TENSORS) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    atomic_write_json(path / CONFIG, {**header(kind), "params": params, "state": state or {}})
    return path


def read_artifact(path: str | Path, kind: str | None = None) -> Artifact:
    """Read a folder written by :func:`save_artifact` (or by sparekit before format 2)."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise SparekitError(f"no saved sparekit object at {path} (missing {CONFIG})")
    config = read_json(path / CONFIG)
    version = check_header(config, path / CONFIG, None, (1, FORMAT_VERSION))
    for key in ("params", "state", "extra"):
        if not isinstance(config.get(key) or {}, dict):
            raise SparekitError(f"{path / CONFIG}: {key!r} must be a JSON object, got {type(config[key]).__name__}",
                                "the folder is damaged; fit and save it again")
    artifact = (_from_version_1(path, config, _read_tensors(path / TENSORS)) if version == 1 else
                Artifact(path, str(config["kind"]), dict(config.get("params") or {}), dict(config.get("state") or {}),
                         _read_tensors(path / TENSORS)))
    if kind is not None and artifact.kind != kind:
        raise SparekitError(f"{path} holds a {artifact.kind!r}, not a {kind!r}")
    # JSON has no tuples; sequence parameters are tuples in every constructor
    artifact.params = {k: tuple(v) if isinstance(v, list) else v for k, v in artifact.params.items()}
    return artifact


def rebuild(artifact: Artifact, expect: type | None = None, **kwargs: Any) -> Any:
    """The object ``artifact`` holds, made by the class registered under its kind; ``expect``: refuse
    (one line) a folder holding anything else, before reading it further."""
    cls = KINDS.lookup(artifact.kind, where=str(artifact.path))
    check_holds(cls, expect, artifact.path, repr(artifact.kind))
    return cls.from_artifact(artifact, **kwargs)


def check_holds(cls: type, expect: type | None, path: str | Path, what: str) -> None:
    """Refuse ``path`` when the class it holds (``what``, in words) is not an ``expect``."""
    if expect is not None and not issubclass(cls, expect):
        raise SparekitError(f"{path} holds a {what} ({cls.__name__}), not a {expect.__name__}",
                            f"pass a folder holding a {expect.__name__}")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A saved object's tensors (none if it has no tensor file); a damaged or unreadable file is one error."""
    if not path.is_file():
        return {}
    check_readable(path)
    try:
        return load_file(str(path))
    except DAMAGED_FILE_ERRORS as exc:
        raise damaged_file(path, exc, "the file is damaged; fit and save the object again") from None


_V1_KEYED = re.compile(r"(?P<name>.+)_(?P<key>\d+|context|memory)_")


def _from_version_1(path: Path, config: dict, tensors: dict[str, torch.Tensor]) -> Artifact:
    """Format 1: probes kept their parameters at the top level (a gate added ``gate.json``); steering
    methods kept ``params`` and ``extra``, with per-layer tensors under names like ``mean_context_9_``."""
    kind = str(config.get("kind"))
    if kind == "linear_probe":
        params = {k: v for k, v in config.items() if k not in ("kind", "format_version", "sparekit_version",
                                                                "n_features_in")}
        state = {"n_features_in": config.get("n_features_in")}
        if (path / "gate.json").is_file():
            gate = read_json(path / "gate.json")
            return Artifact(path, "probe_gate", {"layer": gate.pop("layer"), "threshold": gate.pop("threshold"),
                                                 "probe": params}, {**state, "report": gate}, tensors)
        return Artifact(path, kind, params, state, tensors)
    renamed = {}
    for name, tensor in tensors.items():
        match = _V1_KEYED.fullmatch(name)
        renamed[f"{match['name']}_.{match['key']}" if match else name] = tensor
    return Artifact(path, kind, dict(config.get("params") or {}), dict(config.get("extra") or {}), renamed)


def split_keyed(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``{"vector_.6": t}`` -> ``{"vector_": {6: t}}``; plain names stay tensors (inverse of :func:`join_keyed`)."""
    out: dict[str, Any] = {}
    for name, tensor in tensors.items():
        attr, dot, key = name.partition(".")
        if dot:
            out.setdefault(attr, {})[int(key) if key.isdigit() else key] = tensor
        else:
            out[attr] = tensor
    return out


def join_keyed(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors and ``{key: tensor}`` dicts as flat safetensors names (``vector_.6``)."""
    out: dict[str, torch.Tensor] = {}
    for attr, value in state.items():
        if isinstance(value, torch.Tensor):
            out[attr] = value
        elif isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
            out.update({f"{attr}.{key}": tensor for key, tensor in value.items()})
    return out


__all__ = ["CONFIG", "FORMAT_VERSION", "KINDS", "TENSORS", "Artifact", "check_header", "check_holds", "header",
           "join_keyed", "read_artifact", "rebuild", "save_artifact", "split_keyed"]
