"""Read SAEs from the formats users bring, and save in the SAELens layout.

Supported inputs (detected from the files present):

- SAELens / sparekit folder: ``cfg.json`` + ``sae_weights.safetensors`` (standard, topk,
  batchtopk, jumprelu, gated; a TopK saved with ``rescale_acts_by_decoder_norm`` gets the
  decoder norms folded into its weights, which gives SAELens's codes and reconstructions).
- Gemma Scope: ``params.npz`` (``W_enc, W_dec, b_enc, b_dec, threshold``; JumpReLU).
- Gemma Scope 2: ``params.safetensors`` (lower-case ``w_enc, w_dec, ...``) + optional ``config.json``.
- EleutherAI sparsify: ``cfg.json`` + ``sae.safetensors`` (``encoder.weight``, ``encoder.bias``, ``W_dec``, ``b_dec``).

sparekit saves SAELens folders with the input standardisation folded into the weights
(exact: an affine map before an affine encoder), so SAELens users can read them as-is.
Nothing is ever unpickled; a damaged or badly typed file is one :class:`SparekitError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sparekit.artifacts import header
from sparekit.errors import SparekitError
from sparekit.hooks import TRANSFORMERLENS_HOOKS
from sparekit.models.architecture import ModelInfo
from sparekit.models.assets import assets_for
from sparekit.sae.base import SAE, sae_class
from sparekit.utils.io import (DAMAGED_FILE_ERRORS, atomic_path, atomic_write_json, check_readable, damaged_file,
                               ensure_dir, read_json)
from sparekit.utils.registry import Registry

FORMAT_VERSION = 1
_HOOK_PATTERNS = (
    (re.compile(r"blocks\.(\d+)\.hook_resid_post"), "resid"),
    (re.compile(r"blocks\.(\d+)\.hook_attn_out"), "attn"),
    (re.compile(r"blocks\.(\d+)\.hook_mlp_out"), "mlp"),
    (re.compile(r"layers\.(\d+)\.(?:self_attn|attn)\b"), "attn"),
    (re.compile(r"layers\.(\d+)\.mlp\b"), "mlp"),
    (re.compile(r"layers?[._](\d+)"), "resid"),
)


@dataclass(frozen=True)
class SaeFormat:
    """A format users bring SAEs in: how to spot it and how to read it, side by side."""

    name: str
    files: str  #: what it looks like on disk, for the error that lists the formats
    detect: Callable[[Path], Path | None]  #: a path -> what ``load`` reads, or ``None`` if not this format
    load: Callable[[Path], SAE]


#: Detected in registration order: the first format whose detector answers reads the path.
FORMATS: Registry = Registry("SAE format", None)


def sae_format(name: str, files: str, detect: Callable[[Path], Path | None]) -> Callable[[Callable], Callable]:
    """Register the decorated loader with its detector as format ``name``."""

    def wrap(load: Callable[[Path], SAE]) -> Callable[[Path], SAE]:
        FORMATS.register(name)(SaeFormat(name, files, detect, load))
        return load

    return wrap


def _folder_with(weights: str) -> Callable[[Path], Path | None]:
    """Detector: a folder holding ``weights`` (also given as that file or its ``cfg.json``)."""

    def detect(path: Path) -> Path | None:
        folder = path.parent if path.is_file() and path.name in (weights, "cfg.json") else path
        return folder if (folder / weights).is_file() else None

    return detect


def _file_named(name: str, suffix: str = "") -> Callable[[Path], Path | None]:
    """Detector: the file ``name`` (or any ``*suffix`` file), or a folder holding ``name``."""

    def detect(path: Path) -> Path | None:
        if path.is_file():
            return path if path.name == name or (suffix and path.name.endswith(suffix)) else None
        return path / name if (path / name).is_file() else None

    return detect


def parse_hook(text: str | None) -> tuple[int | None, str]:
    """Layer and component from a hook name or path (``blocks.6.hook_resid_post``, ``layers.6``, ``layer_6_width``)."""
    for pattern, component in _HOOK_PATTERNS:
        match = pattern.search(text or "")
        if match:
            return int(match.group(1)), component
    return None, "resid"


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every array of a safetensors or npz file as float32; a damaged or unreadable file is one clear error."""
    check_readable(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: torch.from_numpy(np.asarray(data[k], dtype=np.float32)) for k in data.files}
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k).float() for k in fh.keys()}
    except DAMAGED_FILE_ERRORS as exc:
        hint = ("it holds pickled Python objects, which sparekit never loads; save plain float arrays"
                if "allow_pickle" in str(exc) else
                "the file is damaged or not an SAE weights file; download or save it again")
        raise damaged_file(path, exc, hint) from None


def _tensors(path: Path, keys: dict[str, str]) -> dict[str, torch.Tensor]:
    """Read ``{our_name: file_key}`` from a safetensors or npz file; name the file and key when one is missing."""
    available = _read_tensors(path)
    out = {}
    for name, key in keys.items():
        if key not in available:
            raise SparekitError(f"missing key {key!r} in {path}", f"keys present: {', '.join(sorted(available))}")
        out[name] = available[key]
    return out


def _require(cfg: dict, key: str, path: Path):
    if key not in cfg:
        raise SparekitError(f"missing key {key!r} in {path}", f"keys present: {', '.join(sorted(cfg))}")
    return cfg[key]


def _cfg_int(cfg: dict, key: str, path: Path, minimum: int = 0) -> int:
    """``cfg[key]`` as an int >= ``minimum`` (integral floats allowed); anything else is a clear error."""
    value = _require(cfg, key, path)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < minimum:
        raise SparekitError(f"{path}: {key!r} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _cfg_bool(cfg: dict, key: str, path: Path) -> bool:
    value = cfg.get(key, False)
    if not isinstance(value, bool):
        raise SparekitError(f"{path}: {key!r} must be true or false, got {value!r}")
    return value


def _cfg_dict(cfg: dict, key: str, path: Path) -> dict:
    value = cfg.get(key) or {}
    if not isinstance(value, dict):
        raise SparekitError(f"{path}: {key!r} must be a JSON object, got {type(value).__name__}")
    return value


def _read_cfg(path: Path) -> dict:
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise SparekitError(f"{path} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def _build(architecture: str, tensors: dict[str, torch.Tensor], source: Path, **kwargs) -> SAE:
    W_enc = tensors["W_enc"]
    if W_enc.ndim != 2 or 0 in W_enc.shape:
        raise SparekitError(f"W_enc in {source} has shape {tuple(W_enc.shape)}, expected (d_in, d_sae)")
    d_in, d_sae = W_enc.shape
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name, tensor in tensors.items():
        want = expected.get(name, (d_sae,))
        if tuple(tensor.shape) != want:
            raise SparekitError(f"{name} in {source} has shape {tuple(tensor.shape)}, expected {want}")
        if not torch.isfinite(tensor).all():
            raise SparekitError(f"{name} in {source} holds NaN or infinite values", "the file is damaged")
    if kwargs.get("k") is not None and not 1 <= kwargs["k"] <= d_sae:
        raise SparekitError(f"{source}: k={kwargs['k']} is outside 1..d_sae={d_sae}")
    sae = sae_class(architecture)(d_in, d_sae, **kwargs)
    sae.load_state_dict(tensors, strict=False)
    missing = {n for n, _ in sae.named_parameters()} - set(tensors)
    if missing:
        raise SparekitError(f"{source} lacks {', '.join(sorted(missing))} needed by a {architecture} SAE")
    return sae.eval()


def _fold_decoder_norm(sae: SAE) -> None:
    """SAELens's ``rescale_acts_by_decoder_norm`` TopK, made a plain one with the same codes and reconstructions.

    SAELens ranks ``hidden_pre * |W_dec_i|`` and decodes ``(z / |W_dec_i|) @ W_dec``; scaling
    encoder column i by ``|W_dec_i|`` and decoder row i by its inverse computes exactly that.
    """
    with torch.no_grad():
        norms = sae.W_dec.norm(dim=-1)
        inverse = torch.where(norms > 0, 1 / norms, torch.zeros_like(norms))  # a zero row never contributes
        sae.W_enc.mul_(norms)
        sae.b_enc.mul_(norms)
        sae.W_dec.mul_(inverse[:, None])


@sae_format("saelens", "cfg.json+sae_weights.safetensors (SAELens)", _folder_with("sae_weights.safetensors"))
def _load_saelens(folder: Path) -> SAE:
    cfg_path = folder / "cfg.json"
    cfg = _read_cfg(cfg_path)
    architecture = cfg.get("architecture", "standard")
    cls = sae_class(str(architecture))
    for key in ("normalize_activations", "reshape_activations"):
        value = cfg.get(key, "none") or "none"
        if value != "none":
            raise SparekitError(f"{cfg_path}: {key}={value!r} is not supported", "only 'none' is")
    meta, extra = _cfg_dict(cfg, "metadata", cfg_path), _cfg_dict(cfg, "sparekit", cfg_path)
    hook_name = meta.get("hook_name") or cfg.get("hook_name")
    layer, component = parse_hook(hook_name if isinstance(hook_name, str) else None)
    for source in (cfg, extra):
        if source.get("hook_layer") is not None:
            layer = _cfg_int(source, "hook_layer", cfg_path)
    component = extra.get("hook_component", component)
    if not isinstance(component, str) or component not in TRANSFORMERLENS_HOOKS:
        raise SparekitError(f"{cfg_path}: unknown hook_component {component!r}", "use resid, attn or mlp")
    kwargs = {"hook_layer": layer, "hook_component": component,
              "apply_b_dec_to_input": _cfg_bool(cfg, "apply_b_dec_to_input", cfg_path)}
    if architecture in ("topk", "batchtopk"):
        kwargs["k"] = _cfg_int(cfg, "k", cfg_path, minimum=1)
    rescale = _cfg_bool(cfg, "rescale_acts_by_decoder_norm", cfg_path)
    if rescale and architecture not in ("topk", "batchtopk"):
        raise SparekitError(f"{cfg_path}: rescale_acts_by_decoder_norm is only supported for topk SAEs",
                            f"this one is {architecture!r}")
    names = ("W_enc", "W_dec", "b_enc", "b_dec", *cls.extra_params)
    weights = folder / "sae_weights.safetensors"
    sae = _build(architecture, _tensors(weights, {n: cls.saelens_keys.get(n, n) for n in names}), weights, **kwargs)
    for key, width in (("d_in", sae.d_in), ("d_sae", sae.d_sae)):
        if key in cfg and _cfg_int(cfg, key, cfg_path, minimum=1) != width:
            raise SparekitError(f"{cfg_path} says {key}={cfg[key]} but the weights have {width}")
    if rescale:
        _fold_decoder_norm(sae)
    return sae


@sae_format("gemmascope", "params.npz (Gemma Scope)", _file_named("params.npz", ".npz"))
def _load_gemmascope(file: Path) -> SAE:
    keys = {n: n for n in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
    layer, _ = parse_hook(str(file.parent))
    return _build("jumprelu", _tensors(file, keys), file, hook_layer=layer)


@sae_format("gemmascope2", "params.safetensors (Gemma Scope 2)", _file_named("params.safetensors"))
def _load_gemmascope2(file: Path) -> SAE:
    keys = {"W_enc": "w_enc", "W_dec": "w_dec", "b_enc": "b_enc", "b_dec": "b_dec", "threshold": "threshold"}
    config = file.parent / "config.json"
    hook = _read_cfg(config).get("hf_hook_point_in") if config.is_file() else None
    layer, component = parse_hook(hook if isinstance(hook, str) else str(file.parent))
    return _build("jumprelu", _tensors(file, keys), file, hook_layer=layer, hook_component=component)


@sae_format("sparsify", "cfg.json+sae.safetensors (sparsify)", _folder_with("sae.safetensors"))
def _load_sparsify(folder: Path) -> SAE:
    cfg_path = folder / "cfg.json"
    cfg = _read_cfg(cfg_path)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise SparekitError(f"{cfg_path}: sparsify activation {activation!r} is not supported", "only 'topk' is")
    if cfg.get("skip_connection"):
        raise SparekitError(f"{cfg_path}: sparsify SAEs with a skip connection are not supported")
    weights = folder / "sae.safetensors"
    tensors = _tensors(weights, {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "W_dec", "b_dec": "b_dec"})
    if tensors["W_enc"].ndim == 2:  # stored [d_sae, d_in]
        tensors["W_enc"] = tensors["W_enc"].T.contiguous()
    d_in = _cfg_int(cfg, "d_in", cfg_path, minimum=1)
    layer, component = parse_hook(folder.name)
    sae = _build("topk", tensors, weights, k=_cfg_int(cfg, "k", cfg_path, minimum=1), hook_layer=layer,
                 hook_component=component, apply_b_dec_to_input=True)
    if sae.d_in != d_in:
        raise SparekitError(f"{cfg_path} says d_in={d_in} but {weights} has width {sae.d_in}")
    return sae


def detect_format(path: Path) -> tuple[SaeFormat, Path]:
    """The format of the SAE at ``path`` and what its loader reads (the first registered detector that answers)."""
    for fmt in FORMATS.values():
        target = fmt.detect(path)
        if target is not None:
            return fmt, target
    raise SparekitError(f"no SAE found at {path}",
                        f"expected {', '.join(fmt.files for fmt in FORMATS.values())}")


def default_sae_path(layer: int, model: ModelInfo | str = "default") -> Path:
    """The SAE shipped for ``model`` (a short name or a loaded model's info) at ``layer``."""
    shipped = shipped_saes(model)
    if layer not in shipped:
        name = model.name if isinstance(model, ModelInfo) else model
        raise SparekitError(f"no shipped SAE for layer {layer} of {name}",
                            f"shipped layers: {', '.join(map(str, shipped)) or 'none'}")
    return shipped[layer]


def shipped_saes(model: ModelInfo | str = "default") -> dict[int, Path]:
    assets = assets_for(model)
    return assets.saes() if assets is not None else {}


#: SAELens release names of Gemma Scope 2's residual-stream SAEs: ``gemma-scope-2-<size>-<pt|it>-res[-all]``
_GEMMA_SCOPE_2 = re.compile(r"gemma-scope-2-(?P<size>[0-9.]+[mb])-(?P<variant>pt|it)-(?P<site>res|res-all)"
                            r"/(?P<sae_id>layer_\d+_width_\w+_l0_\w+)")
_GEMMA_SCOPE_2_FOLDERS = {"res": "resid_post", "res-all": "resid_post_all"}


def gemma_scope_2(name: str) -> Path | None:
    """The local folder of a Gemma Scope 2 SAE named ``<SAELens release>/<SAE id>``, fetched from the hub once.

    ``gemma-scope-2-270m-pt-res/layer_9_width_16k_l0_medium`` reads
    ``google/gemma-scope-2-270m-pt``, folder ``resid_post/layer_9_width_16k_l0_medium``
    (``-res-all``: ``resid_post_all``). ``None`` when ``name`` is not such a name.
    """
    match = _GEMMA_SCOPE_2.fullmatch(name)
    if match is None:
        return None
    from huggingface_hub import hf_hub_download  # deliberately lazy: only a hub name needs the hub client
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError  # lazy, as above

    repo = f"google/gemma-scope-2-{match['size']}-{match['variant']}"
    folder = f"{_GEMMA_SCOPE_2_FOLDERS[match['site']]}/{match['sae_id']}"
    try:
        for file in ("params.safetensors", "config.json"):
            weights = Path(hf_hub_download(repo, f"{folder}/{file}")).parent
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise SparekitError(f"cannot fetch {name} ({repo}/{folder}) from the Hugging Face hub: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                            "connect to the hub once (it is cached), or download the folder and pass its path") from None
    return weights


def load_sae(
    path: str | Path = "default",
    layer: int | None = None,
    model_info: ModelInfo | None = None,
    device: str | torch.device | None = None,
) -> SAE:
    """Load an SAE from any supported format (float32, eval mode).

    ``path="default"`` with ``layer=L`` returns the SAE shipped for Gemma 3 270M; a Gemma Scope 2
    name such as ``"gemma-scope-2-270m-pt-res/layer_9_width_16k_l0_medium"`` fetches that SAE
    from the hub (:func:`gemma_scope_2`). ``layer`` overrides the layer read from the files.
    With ``model_info`` the SAE's width and layer are checked against the model.
    """
    if str(path) == "default":
        if layer is None:
            raise SparekitError("load_sae('default') needs layer=", "shipped layers: see sparekit.sae.shipped_layers()")
        path = default_sae_path(layer)
    path = gemma_scope_2(str(path)) or Path(path).expanduser()
    if not path.exists():
        raise SparekitError(f"missing SAE path: {path}")
    fmt, target = detect_format(path)
    sae = fmt.load(target)
    if layer is not None:
        sae.hook_layer = int(layer)
    if model_info is not None:
        check_compatible(sae, model_info, path)
    return sae.to(device) if device is not None else sae


def shipped_layers(model: ModelInfo | str = "default") -> list[int]:
    return list(shipped_saes(model))


def check_compatible(sae: SAE, info: ModelInfo, source: Path | str | None = None) -> None:
    """Raise a clear error when an SAE cannot read this model's activations."""
    name = f"the SAE {source}" if source is not None else f"the layer-{sae.hook_layer} SAE"
    if sae.d_in != info.d_model:
        raise SparekitError(f"{name} reads width {sae.d_in} but {info.name} has d_model {info.d_model}",
                            "use an SAE trained on this model")
    if sae.hook_layer is None:
        raise SparekitError(f"{name} does not say which layer it reads", "pass layer=")
    info.check_layer(int(sae.hook_layer))


def folded(sae: SAE) -> SAE:
    """An equivalent SAE reading raw model units: input standardisation folded into the weights."""
    mean, scale = sae.input_mean, sae.input_scale
    out = sae_class(sae.architecture)(sae.d_in, sae.d_sae, **{**sae.init_kwargs(), "apply_b_dec_to_input": False})
    with torch.no_grad():
        state = {name: t.detach().clone() for name, t in sae.state_dict().items()}
        b_shift = sae.b_dec if sae.apply_b_dec_to_input else torch.zeros_like(sae.b_dec)
        state["W_enc"] = sae.W_enc / scale[:, None]
        sae.shift_input(state, mean / scale + b_shift)
        state["W_dec"] = sae.W_dec * scale
        state["b_dec"] = sae.b_dec * scale + mean
        state["input_mean"], state["input_scale"] = torch.zeros_like(mean), torch.ones_like(scale)
        out.load_state_dict(state)
    return out.eval()


def save_sae(sae: SAE, path: str | Path, dtype: torch.dtype = torch.float32, extra: dict | None = None) -> Path:
    """Write ``sae`` as a SAELens folder; ``extra`` (e.g. training facts) goes under ``cfg['sparekit']``."""
    path = ensure_dir(path)
    plain = folded(sae)
    tensors = {plain.saelens_keys.get(name, name): t.detach().to("cpu", dtype).contiguous()
               for name, t in plain.named_parameters()}
    cfg = plain.config()
    for key in ("hook_layer", "hook_component"):
        cfg.pop(key)
    cfg.update({"dtype": str(dtype).removeprefix("torch."), "normalize_activations": "none",
                "metadata": {"hook_name": None if sae.hook_layer is None
                             else TRANSFORMERLENS_HOOKS[sae.hook_component].format(sae.hook_layer)},
                "sparekit": {**header("sae", FORMAT_VERSION), "hook_layer": sae.hook_layer,
                             "hook_component": sae.hook_component, **(extra or {})}})
    with atomic_path(path / "sae_weights.safetensors") as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(path / "cfg.json", cfg)
    return path
