"""llama.cpp's control-vector GGUF format, written from and read into sparekit methods.

A control vector is one vector per layer added to the residual stream
(:class:`~sparekit.steering.base.ControlVector`). ``export_control_vector``
writes what a fitted sparekit method adds (:meth:`SteeringMethod.control_vector`) in the
format llama.cpp loads natively (``--control-vector x.gguf``, ``--control-vector-scaled x.gguf S``)
and repeng writes; ``sparekit.load("x.gguf")`` brings such a file back as a ``cvec`` method
(:class:`~sparekit.steering.baselines.VectorSteering`).

**Layer index** (read in llama.cpp's source, not measured): ``common_control_vector_load_one``
(``common/common.cpp``) stores tensor ``direction.N`` at offset ``n_embd · (N - 1)`` of a flat
buffer and refuses ``N = 0``; ``llama_adapter_cvec::apply`` (``src/llama-adapter.cpp``) fills
the vector of block ``il`` from offset ``n_embd · (il - 1)`` for ``il = 1 … n_layer - 1``; every
model graph adds it with ``build_cvec(cur, il)`` right after the block's FFN residual add, on
the block output ``l_out-il``. So ``direction.N`` is added to the output of decoder block N,
which is sparekit's layer N (``hidden_states[N + 1]``): the same index, no shift. Layer 0 (the
output of block 0) has no slot, so a method editing it cannot be exported.

**Where it acts**: llama.cpp adds the vector at every position of the prompt and of every
generated token; sparekit's edits act on the last prompt token of the prompt pass. The same
file therefore steers harder in llama.cpp than in sparekit at the same scale: choose the scale
there (``--control-vector-scaled x.gguf S``) on a few prompts rather than reusing sparekit's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparekit.errors import SparekitError
from sparekit.steering.base import ControlVector, Direction, SteeringMethod
from sparekit.utils.arrays import to_numpy
from sparekit.utils.config import finite_number
from sparekit.utils.io import atomic_path

ARCH = "controlvector"
_TENSOR = re.compile(r"direction\.(\d+)")


def export_control_vector(method: SteeringMethod, path: str | Path, toward: Direction, strength: float,
                          model_hint: str = "unknown") -> ControlVector:
    """Write ``method.control_vector(toward, strength)`` as a llama.cpp control-vector GGUF, atomically.

    Besides llama.cpp's keys the file records ``sparekit.{kind,toward,strength,exact,note}``, so an
    approximate export says so wherever it travels.
    """
    import gguf  # deliberately lazy: the GGUF writer is needed only to export or import a control vector

    method.check_is_fitted()
    cvec = method.control_vector(toward, finite_number(strength, "strength"))
    if not cvec.vectors:
        raise SparekitError(f"{method.kind}: no layers to export")
    if 0 in cvec.vectors:
        raise SparekitError(f"{method.kind} edits layer 0, which a llama.cpp control vector cannot express",
                            "llama.cpp has no direction.0 (it adds direction.N to block N's output for N >= 1); "
                            "fit the method at layers >= 1")
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(cvec.vectors))
        writer.add_string("sparekit.kind", method.kind)
        writer.add_string("sparekit.toward", toward)
        writer.add_float32("sparekit.strength", float(strength))
        writer.add_bool("sparekit.exact", cvec.exact)
        writer.add_string("sparekit.note", cvec.note)
        for layer in sorted(cvec.vectors):
            writer.add_tensor(f"direction.{layer}", to_numpy(cvec.vectors[layer].float()))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return cvec


def read_control_vector(path: str | Path) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    """``({layer: float32 vector}, {key: value})`` of a control-vector GGUF, checked the way llama.cpp checks it."""
    import gguf  # deliberately lazy: the GGUF writer is needed only to export or import a control vector

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise SparekitError(f"{path} is not a readable GGUF file: {exc}") from None
    meta = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    if meta.get("general.architecture") not in (None, ARCH):
        raise SparekitError(f"{path} is a {meta['general.architecture']!r} GGUF, not a control vector",
                            "pass a control-vector file (general.architecture = controlvector)")
    vectors: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        match = _TENSOR.fullmatch(tensor.name)
        if match is None or int(match.group(1)) == 0:
            raise SparekitError(f"{path}: tensor {tensor.name!r} is not direction.N with N >= 1")
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32 or len(tensor.shape) != 1:
            raise SparekitError(f"{path}: {tensor.name} must be a 1-D F32 tensor")
        layer = int(match.group(1))
        vector = torch.from_numpy(np.array(tensor.data, dtype=np.float32))
        vectors[layer] = vectors[layer] + vector if layer in vectors else vector  # llama.cpp sums repeats
    if not vectors:
        raise SparekitError(f"{path} holds no direction tensors")
    if len({v.numel() for v in vectors.values()}) != 1:
        raise SparekitError(f"{path}: direction tensors differ in size")
    return vectors, meta


__all__ = ["export_control_vector", "read_control_vector"]
