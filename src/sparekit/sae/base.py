"""Sparse autoencoders: one base class, one small subclass per architecture, one registry.

An SAE reads the activation ``h`` of one :class:`~sparekit.hooks.Site` in model units.
It first standardises ``h`` with per-dimension statistics stored in the SAE
(``x = (h - input_mean) / input_scale``; identity for imported SAEs), because a few
massive residual dimensions would otherwise dominate every squared error. Codes live
in that normalised space; :meth:`SAE.decode` and :meth:`SAE.decode_delta` map back to
model units, so steering can edit ``h`` directly::

    z = sae.pre_acts(h)                       # dense code SpARE reads
    h_edit = h - sae.decode_delta(z_minus) + sae.decode_delta(z_plus)
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sparekit.errors import SparekitError
from sparekit.hooks import Site
from sparekit.utils.registry import Registry

REGISTRY: Registry = Registry("SAE architecture", "architecture")
register = REGISTRY.register


def sae_class(architecture: str) -> type[SAE]:
    return REGISTRY.lookup(architecture)


class SAE(nn.Module):
    """Base sparse autoencoder; subclasses define :meth:`pre_acts` / :meth:`encode` nonlinearity."""

    architecture: ClassVar[str] = ""
    # our parameter name -> its key in a SAELens ``sae_weights.safetensors`` (where they differ)
    saelens_keys: ClassVar[dict[str, str]] = {}
    # per-latent ``[d_sae]`` parameters beyond W_enc, W_dec, b_enc, b_dec
    extra_params: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        k: int | None = None,
        hook_layer: int | None = None,
        hook_component: str = "resid",
        apply_b_dec_to_input: bool = False,
    ):
        super().__init__()
        if d_in <= 0 or d_sae <= 0:
            raise SparekitError(f"SAE sizes must be positive, got d_in={d_in}, d_sae={d_sae}")
        self.d_in, self.d_sae, self.k = int(d_in), int(d_sae), k
        self.hook_layer, self.hook_component = hook_layer, hook_component
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("input_mean", torch.zeros(d_in))
        self.register_buffer("input_scale", torch.ones(d_in))

    # -- where it reads ----------------------------------------------------------
    @property
    def site(self) -> Site | None:
        """The :class:`Site` this SAE was trained on, when known."""
        return None if self.hook_layer is None else Site(int(self.hook_layer), self.hook_component)  # type: ignore[arg-type]

    def init_kwargs(self) -> dict:
        """Constructor arguments besides the sizes (to rebuild an equivalent SAE)."""
        kwargs = {"hook_layer": self.hook_layer, "hook_component": self.hook_component,
                  "apply_b_dec_to_input": self.apply_b_dec_to_input}
        return kwargs if self.k is None else {**kwargs, "k": self.k}

    # -- the maps ----------------------------------------------------------------
    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        """Model units -> the SAE's standardised input space."""
        return (h.to(self.W_enc.dtype) - self.input_mean) / self.input_scale

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """``x @ W_enc`` of the normalised (and, if configured, ``b_dec``-centred) input."""
        x = self.normalize(h)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc

    def hidden_pre(self, h: torch.Tensor) -> torch.Tensor:
        """Affine encoder output before any nonlinearity."""
        return self.project(h) + self.b_enc

    def pre_acts(self, h: torch.Tensor) -> torch.Tensor:
        """Dense code SpARE reads: ReLU code (TopK: before top-k; JumpReLU: thresholded)."""
        return torch.relu(self.hidden_pre(h))

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Sparse code of ``h`` (model units), ``[N, d_sae]``."""
        return self.pre_acts(h)

    def shift_input(self, state: dict[str, torch.Tensor], shift: torch.Tensor) -> None:
        """Fold ``x -> x - shift`` into the encoder biases of ``state`` (exact: the encoder is affine in x)."""
        state["b_enc"] = self.b_enc - shift @ self.W_enc

    def decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction in the standardised space (what the training loss compares)."""
        return z @ self.W_dec + self.b_dec

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``h`` in model units."""
        return self.decode_normalized(z) * self.input_scale + self.input_mean

    def decode_delta(self, z: torch.Tensor) -> torch.Tensor:
        """Change of ``h`` (model units) caused by code ``z``: no bias, scale applied."""
        return (z.to(self.W_dec.dtype) @ self.W_dec) * self.input_scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``h``: ``decode(encode(h))``."""
        return self.decode(self.encode(h))

    # -- training ----------------------------------------------------------------
    #: whether :class:`~sparekit.sae.train.TopKTrainer` can fit this architecture
    trainable: ClassVar[bool] = False

    def training_reconstruction(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction in the standardised space, ``[N, d_sae]`` mask of the latents that fired) of a
        training batch; each trainable architecture says how it encodes during training."""
        raise NotImplementedError(f"{type(self).__name__} has no training code path")

    def reconstruction_loss(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(FVU, residual, fired) of a batch ``h`` in model units; FVU = squared error / variance, standardised."""
        x = self.normalize(h)
        x_hat, fired = self.training_reconstruction(h)
        residual = x - x_hat
        return residual.pow(2).sum() / (x - x.mean(0)).pow(2).sum(), residual, fired

    # -- persistence (save_sae and load_sae in sparekit.sae.formats, together) -----
    def config(self) -> dict:
        """The SAE-specific part of ``cfg.json`` (SAELens keys plus sparekit's own)."""
        cfg = {"architecture": self.architecture, "d_in": self.d_in, "d_sae": self.d_sae,
               "apply_b_dec_to_input": self.apply_b_dec_to_input, "hook_layer": self.hook_layer,
               "hook_component": self.hook_component}
        if self.k is not None:
            cfg["k"] = self.k
        return cfg

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_sae={self.d_sae}, k={self.k}, site={self.site}"


@register("standard")
class ReluSAE(SAE):
    """ReLU SAE (SAELens ``standard``): code = relu(W_enc x + b_enc)."""


@register("jumprelu")
class JumpReluSAE(SAE):
    """JumpReLU SAE (Gemma Scope): a latent fires only above its learned threshold."""

    extra_params: ClassVar[tuple[str, ...]] = ("threshold",)

    def __init__(self, d_in: int, d_sae: int, **kwargs):
        super().__init__(d_in, d_sae, **kwargs)
        self.threshold = nn.Parameter(torch.zeros(d_sae))

    def pre_acts(self, h: torch.Tensor) -> torch.Tensor:
        pre = self.hidden_pre(h)
        return torch.relu(pre) * (pre > self.threshold)


@register("gated")
class GatedSAE(SAE):
    """Gated SAE (SAELens ``gated``): ``W_enc x + b_gate > 0`` decides which latents fire,
    ``relu(W_enc·exp(r_mag) x + b_mag)`` how strongly. ``b_enc`` holds ``b_gate``.
    """

    saelens_keys: ClassVar[dict[str, str]] = {"b_enc": "b_gate"}
    extra_params: ClassVar[tuple[str, ...]] = ("b_mag", "r_mag")

    def __init__(self, d_in: int, d_sae: int, **kwargs):
        super().__init__(d_in, d_sae, **kwargs)
        self.b_mag = nn.Parameter(torch.zeros(d_sae))
        self.r_mag = nn.Parameter(torch.zeros(d_sae))

    def pre_acts(self, h: torch.Tensor) -> torch.Tensor:
        projected = self.project(h)  # shared by the gate and the magnitude path
        return torch.relu(projected * self.r_mag.exp() + self.b_mag) * (projected + self.b_enc > 0)

    def shift_input(self, state: dict[str, torch.Tensor], shift: torch.Tensor) -> None:
        super().shift_input(state, shift)
        state["b_mag"] = self.b_mag - (shift @ self.W_enc) * self.r_mag.exp()


def spare_delta(z: torch.Tensor, sae: SAE, remove_idx: torch.Tensor, remove_target: torch.Tensor,
                add_idx: torch.Tensor, add_target: torch.Tensor) -> torch.Tensor:
    """SpARE's residual change (:mod:`sparekit.steering.spare`): ``-W_dec^T z⁻ + W_dec^T z⁺`` with
    z⁻ = min(target, z), z⁺ = max(target - z, 0). Here, with the SAE, so that it needs no transformers."""
    z_minus = torch.zeros_like(z)
    z_plus = torch.zeros_like(z)
    z_minus[:, remove_idx] = torch.minimum(remove_target, z[:, remove_idx])
    z_plus[:, add_idx] = torch.clamp(add_target - z[:, add_idx], min=0)
    return sae.decode_delta(z_plus) - sae.decode_delta(z_minus)


def topk_code(dense: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest entries of each row of a non-negative code."""
    values, indices = dense.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(dense).scatter_(-1, indices, values)


@register("topk")
class TopKSAE(SAE):
    """TopK SAE: the ``k`` largest ReLU pre-activations of each token fire."""

    trainable = True

    def __init__(self, d_in: int, d_sae: int, k: int = 32, **kwargs):
        super().__init__(d_in, d_sae, k=int(k), **kwargs)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        return topk_code(self.pre_acts(h), self.k)

    def training_reconstruction(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode only the ``k`` chosen rows of ``W_dec`` (``embedding_bag``): no dense ``[N, d_sae]`` product."""
        dense = self.pre_acts(h)
        values, indices = dense.topk(self.k, dim=-1, sorted=False)
        x_hat = F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec
        return x_hat, torch.zeros_like(dense, dtype=torch.bool).scatter_(-1, indices, values.detach() > 0)


@register("batchtopk")
class BatchTopKSAE(TopKSAE):
    """BatchTopK SAE: trains with the top ``k × N`` codes of a batch; encodes per token with top-k."""

    def batch_encode(self, h: torch.Tensor) -> torch.Tensor:
        """Training-time code: the ``k * N`` largest values over the whole batch."""
        dense = self.pre_acts(h)
        flat = dense.flatten()
        values, indices = flat.topk(min(self.k * dense.shape[0], flat.numel()), sorted=False)
        return torch.zeros_like(flat).scatter_(0, indices, values).view_as(dense)

    def training_reconstruction(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.batch_encode(h)
        return self.decode_normalized(code), code > 0
