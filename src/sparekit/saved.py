"""``sparekit.load``: any saved sparekit object, whatever its kind.

It sits above every package whose classes it rebuilds (probes, gates, steering methods, SAEs,
control vectors), so the on-disk format (:mod:`sparekit.artifacts`) stays below them all.
A folder with ``config.json`` naming a ``kind`` goes to the class registered under it;
SAEs keep the SAELens layout (``cfg.json``, with the sparekit header under ``"sparekit"``) and
are recognised, like the external SAE formats, by the SAE format detectors; a ``.gguf`` file
is a llama.cpp control vector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparekit.artifacts import CONFIG, KINDS, read_artifact
from sparekit.errors import SparekitError
from sparekit.utils.io import read_json_object


def _register_kinds() -> None:
    """Import the modules whose classes register a kind."""
    import sparekit.probes.linear  # noqa: F401
    import sparekit.steering  # noqa: F401
    import sparekit.steering.gate  # noqa: F401


def load(path: str | Path, **kwargs: Any) -> Any:
    """The object saved at ``path``: a probe, gate, steering method, SAE or control vector.

    Keyword arguments go to the class's reader (e.g. ``model_hash=`` refuses a probe fitted on
    another model).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise SparekitError(f"nothing to load at {path}")
    if path.suffix == ".gguf":
        from sparekit.steering import load_method

        return load_method(path)
    if path.is_file() or not (path / CONFIG).is_file() or "kind" not in read_json_object(path / CONFIG):
        from sparekit.sae.formats import load_sae

        return load_sae(path, **kwargs)
    _register_kinds()
    artifact = read_artifact(path)
    return KINDS.lookup(artifact.kind, where=str(path)).from_artifact(artifact, **kwargs)


__all__ = ["load"]
