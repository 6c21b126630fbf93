"""Where a model's parts compute, also when accelerate spreads it over devices (``device_map``).

With ``load_model(..., device_map="auto")`` the decoder blocks may sit on different GPUs, on
the CPU, or offloaded (parameters on ``meta``, loaded by accelerate's hook for each call).
``model.device`` then names only the first parameter's device, so inputs and the tensors an
edit adds go to the device that actually runs the module: accelerate's execution device
when it hooked the module, else the module's parameters' device.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from sparekit.errors import SparekitError
from sparekit.utils.io import cache_dir

DEVICE_MAP_CHOICES = ("auto", "balanced", "balanced_low_0", "sequential")
#: Device types a model may be placed on, each with the torch backend that says whether it is present.
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def check_device(device: str | torch.device) -> torch.device:
    """``device`` parsed and present on this machine; else one error naming it and what to use instead.

    Checked once, before any model loads: torch itself only fails at the first ``.to()``, with a
    traceback (no CUDA build) or a list of every device type it knows (a typo).
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in DEVICE_TYPES:
        raise SparekitError(f"unknown device {str(device)!r}", "use cpu, cuda, cuda:N, mps or xpu")
    if parsed.type == "cpu":
        return parsed
    backend = torch.backends.mps if parsed.type == "mps" else getattr(torch, parsed.type)
    if not backend.is_available():
        raise SparekitError(f"device {str(device)!r} is not available: this torch {torch.__version__} sees no "
                            f"{parsed.type.upper()} device", "use --device cpu, or leave --device out")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if parsed.index is not None and parsed.index >= count:
        raise SparekitError(f"device {str(device)!r} is not available: this machine has {count} "
                            f"{parsed.type} device(s)", f"use {parsed.type}:0 … {parsed.type}:{count - 1}")
    return parsed


def module_device(module: torch.nn.Module) -> torch.device:
    """The device ``module`` computes on."""
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if device is not None:
        return torch.device(device)
    for parameter in module.parameters():
        if parameter.device.type != "meta":
            return parameter.device
    return torch.device("cpu")


def input_device(lm) -> torch.device:
    """Where token ids go: the input embedding's device."""
    return module_device(lm.model.get_input_embeddings())


def site_device(lm, layer: int) -> torch.device:
    """Where decoder block ``layer`` computes (captures and edits of that layer live there)."""
    return module_device(lm.model.get_submodule(lm.info.module_path(layer, "resid")))


def device_map_kwargs(device_map: str | dict[str, Any] | None, model_hash: str) -> dict[str, Any]:
    """``from_pretrained`` arguments that place the model with accelerate; offloaded weights go
    under ``$SPAREKIT_CACHE/offload/<model>`` (kept: a rerun reuses them)."""
    if device_map is None:
        return {}
    if isinstance(device_map, str) and device_map not in DEVICE_MAP_CHOICES:
        raise SparekitError(f"unknown device map {device_map!r}",
                            f"use {', '.join(DEVICE_MAP_CHOICES)} or a {{module: device}} mapping")
    folder = cache_dir() / "offload" / hashlib.sha256(model_hash.encode()).hexdigest()[:16]
    return {"device_map": device_map, "offload_folder": str(folder)}
