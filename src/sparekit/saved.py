"""``sparekit.load``: any saved sparekit object, whatever its kind; the one loader of saved folders.

It sits above every package whose classes it rebuilds (probes, gates, steering methods, fitted
bundles, SAEs, control vectors), so the on-disk format (:mod:`sparekit.artifacts`) stays below them all.
A folder with ``config.json`` naming a ``kind`` goes to the class registered under it
(:func:`~sparekit.artifacts.rebuild`); SAEs keep the SAELens layout (``cfg.json``, with the sparekit
header under ``"sparekit"``) and are recognised, like the external SAE formats, by the SAE format
detectors; a ``.gguf`` file is a llama.cpp control vector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sparekit.probes.linear  # noqa: F401  (registers the probe kind)
import sparekit.steering  # noqa: F401  (registers every method, the gate and the fitted bundle)
from sparekit.artifacts import CONFIG, check_holds, read_artifact, rebuild
from sparekit.errors import SparekitError
from sparekit.sae.base import SAE
from sparekit.sae.formats import load_sae
from sparekit.steering.baselines.vector import VectorSteering
from sparekit.utils.io import read_json_object


def load(path: str | Path, expect: type | None = None, **kwargs: Any) -> Any:
    """The object saved at ``path``: a probe, gate, steering method, fitted bundle, SAE or control vector.

    ``expect`` (a class, e.g. :class:`~sparekit.steering.SteeringMethod`): refuse, in one line naming
    what the folder holds, anything else. Keyword arguments go to the class's reader (e.g.
    ``model_hash=`` refuses a probe fitted on another model).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise SparekitError(f"nothing to load at {path}")
    if path.suffix == ".gguf":
        check_holds(VectorSteering, expect, path, "llama.cpp control vector")
        return VectorSteering.from_control_vector(path)
    if path.is_file() or not (path / CONFIG).is_file() or "kind" not in read_json_object(path / CONFIG):
        if expect is not None and not issubclass(SAE, expect):
            raise SparekitError(f"no saved {expect.__name__} at {path} (no {CONFIG} naming a kind)",
                                "pass a folder that sparekit saved one in")
        return load_sae(path, **kwargs)
    return rebuild(read_artifact(path), expect, **kwargs)


__all__ = ["load"]
