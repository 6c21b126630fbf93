"""Sparse autoencoders: architectures, loading/saving in common formats, training, evaluation.

    from sparekit.sae import load_sae
    sae = load_sae("default", layer=6)          # shipped TopK SAE for Gemma 3 270M, block 6 output
    z = sae.pre_acts(h)                         # [N, d_sae] dense code (h: [N, d_model] float32)
    h2 = h - sae.decode_delta(z_minus) + sae.decode_delta(z_plus)
"""

from sparekit.sae.base import REGISTRY, SAE, BatchTopKSAE, GatedSAE, JumpReluSAE, ReluSAE, TopKSAE, register
from sparekit.sae.formats import FORMATS, check_compatible, folded, load_sae, sae_format, save_sae, shipped_layers

__all__ = ["FORMATS", "REGISTRY", "SAE", "BatchTopKSAE", "GatedSAE", "JumpReluSAE", "ReluSAE", "TopKSAE",
           "check_compatible", "folded", "load_sae", "register", "sae_format", "save_sae", "shipped_layers"]
