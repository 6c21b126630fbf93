"""Where the decoder blocks, attention and MLP live in each supported architecture.

Layer indexing, stated once for the whole package: **layer L is the output of
decoder block L**, i.e. ``output_hidden_states[L + 1]`` (``hidden_states[0]`` is
the embedding output), which TransformerLens calls ``blocks.L.hook_resid_post``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from sparekit.errors import SparekitError

from sparekit.utils.registry import unknown_name

# model_type -> (path of the ModuleList of blocks, attention attr, MLP attr)
_LAYOUTS: dict[str, tuple[str, str, str]] = {
    "llama": ("model.layers", "self_attn", "mlp"),
    "mistral": ("model.layers", "self_attn", "mlp"),
    "qwen2": ("model.layers", "self_attn", "mlp"),
    "qwen3": ("model.layers", "self_attn", "mlp"),
    "gemma": ("model.layers", "self_attn", "mlp"),
    "gemma2": ("model.layers", "self_attn", "mlp"),
    "gemma3_text": ("model.layers", "self_attn", "mlp"),
    "gpt2": ("transformer.h", "attn", "mlp"),
}

SUPPORTED_ARCHITECTURES = tuple(sorted(_LAYOUTS))
#: the attention output projection inside the attention module (its input holds the per-head outputs)
_OUT_PROJ = {"gpt2": "c_proj"}
#: the revision in a hub model's hash (``hub:<name>@<revision>``) when its snapshot records no commit
UNPINNED_REVISION = "unknown"


@dataclass(frozen=True)
class ModelInfo:
    """A small description of a loaded model's architecture and provenance."""

    name: str
    model_type: str
    n_layers: int
    d_model: int
    vocab_size: int
    layers_path: str
    attn_attr: str
    mlp_attr: str
    model_hash: str

    @property
    def pins_weights(self) -> bool:
        """Whether ``model_hash`` names one set of weights: a hub snapshot without a commit does not, so nothing
        may be cached under it for another run to reuse."""
        return not self.model_hash.endswith(f"@{UNPINNED_REVISION}")

    def block_path(self, layer: int) -> str:
        return f"{self.layers_path}.{layer}"

    def module_path(self, layer: int, component: str) -> str:
        """HF module path of a component: ``resid`` (block output), ``attn``, ``mlp`` or ``heads``
        (the attention output projection, whose *input* :class:`~sparekit.hooks.Hooks` reads)."""
        self.check_layer(layer)
        if component == "resid":
            return self.block_path(layer)
        if component == "attn":
            return f"{self.block_path(layer)}.{self.attn_attr}"
        if component == "mlp":
            return f"{self.block_path(layer)}.{self.mlp_attr}"
        if component == "heads":
            return f"{self.block_path(layer)}.{self.attn_attr}.{_OUT_PROJ.get(self.model_type, 'o_proj')}"
        raise unknown_name("component", component, ("resid", "attn", "mlp", "heads"))

    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise SparekitError(
                f"layer {layer} is out of range for {self.name}",
                f"this model has layers 0..{self.n_layers - 1}",
            )
        return layer

    def to_dict(self) -> dict:
        return asdict(self)


def describe(model: torch.nn.Module, name: str, model_hash: str) -> ModelInfo:
    """Build :class:`ModelInfo` for an HF causal LM, or raise for unknown layouts."""
    config = model.config
    model_type = getattr(config, "model_type", "unknown")
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if model_type not in _LAYOUTS:
        raise SparekitError(
            f"unsupported architecture {model_type!r} ({type(model).__name__})",
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}",
        )
    layers_path, attn_attr, mlp_attr = _LAYOUTS[model_type]
    layers = model.get_submodule(layers_path)
    return ModelInfo(
        name=name,
        model_type=model_type,
        n_layers=len(layers),
        d_model=int(getattr(text_config, "hidden_size", None) or text_config.n_embd),
        vocab_size=int(text_config.vocab_size),
        layers_path=layers_path,
        attn_attr=attn_attr,
        mlp_attr=mlp_attr,
        model_hash=model_hash,
    )
