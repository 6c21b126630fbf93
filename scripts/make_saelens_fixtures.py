"""Write the SAELens fixture folders under tests/fixtures/saelens/ with SAELens itself.

Each folder is what ``sae.save_model`` (or ``save_inference_model`` for BatchTopK) writes,
plus ``expected.safetensors``: a fixed input ``x`` and SAELens's own ``encode(x)`` and
``decode(encode(x))``. The tests read these files without SAELens installed.

Run once in a throwaway environment (SAELens is heavy):

    python3 -m venv --system-site-packages /tmp/saelens-venv
    /tmp/saelens-venv/bin/pip install sae-lens
    PYTHONPATH=src /tmp/saelens-venv/bin/python scripts/make_saelens_fixtures.py

It then converts each fixture with sparekit and prints SAELens's max |dz| and |d recon|
reading the converted folder back (the other direction, which the tests cannot check).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import sae_lens
import torch
from safetensors.torch import save_file
from sae_lens import (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, GatedSAE, GatedSAEConfig, JumpReLUSAE,
                      JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig)
from sae_lens.saes.sae import SAEMetadata

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "saelens"
D_IN, D_SAE, K = 16, 32, 4


def _randomise(sae: torch.nn.Module, seed: int) -> None:
    """Random weights of the scale trained SAEs have (decoder rows of unequal norm on purpose)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(sae.named_parameters()):
            values = torch.randn(param.shape, generator=generator)
            scale = {"W_enc": 0.5, "W_dec": 0.5, "threshold": 0.1, "r_mag": 0.3}.get(name, 0.2)
            param.copy_(values.abs() * scale if name == "threshold" else values * scale)
        if hasattr(sae, "W_dec"):
            sae.W_dec.mul_(torch.rand(D_SAE, 1, generator=generator) * 3 + 0.2)


def _meta(hook: str) -> SAEMetadata:
    return SAEMetadata(hook_name=hook, model_name="tiny")


def main() -> None:
    hook, hf_hook = "blocks.6.hook_resid_post", "model.layers.6.output"
    cases = {
        "standard": lambda: StandardSAE(StandardSAEConfig(D_IN, D_SAE, metadata=_meta(hook))),
        "standard-hf-hook": lambda: StandardSAE(StandardSAEConfig(D_IN, D_SAE, metadata=_meta(hf_hook))),
        "topk": lambda: TopKSAE(TopKSAEConfig(D_IN, D_SAE, k=K, metadata=_meta(hook))),
        "topk-rescale": lambda: TopKSAE(TopKSAEConfig(D_IN, D_SAE, k=K, rescale_acts_by_decoder_norm=True,
                                                      metadata=_meta(hook))),
        "jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(D_IN, D_SAE, apply_b_dec_to_input=False,
                                                          metadata=_meta(hook))),
        "jumprelu-b-dec-in": lambda: JumpReLUSAE(JumpReLUSAEConfig(D_IN, D_SAE, apply_b_dec_to_input=True,
                                                                   metadata=_meta(hook))),
        "gated": lambda: GatedSAE(GatedSAEConfig(D_IN, D_SAE, metadata=_meta(hook))),
        "batchtopk": lambda: BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(D_IN, D_SAE, k=K, metadata=_meta(hook))),
    }
    if OUT.exists():
        shutil.rmtree(OUT)
    x = torch.randn(8, D_IN, generator=torch.Generator().manual_seed(1234)) * 2
    for seed, (name, make) in enumerate(cases.items()):
        sae = make()
        _randomise(sae, seed)
        folder = OUT / name
        if isinstance(sae, BatchTopKTrainingSAE):
            sae.topk_threshold = torch.tensor(0.3, dtype=torch.double)
            sae.save_inference_model(folder)  # BatchTopK is saved for inference as JumpReLU
            sae = sae_lens.SAE.load_from_disk(folder)
        else:
            sae.save_model(folder)
        sae.eval()
        with torch.no_grad():
            z = sae.encode(x)
            save_file({"x": x, "z": z.contiguous(), "recon": sae.decode(z).contiguous()},
                      str(folder / "expected.safetensors"))
    (OUT / "SOURCE.json").write_text(json.dumps({"sae_lens": sae_lens.__version__, "torch": torch.__version__,
                                                 "script": "scripts/make_saelens_fixtures.py"}, indent=2) + "\n")
    print(f"wrote {len(cases)} fixtures with SAELens {sae_lens.__version__} to {OUT}")
    check_converted()


def check_converted() -> None:
    """Each fixture through ``sparekit.save_sae`` and back into SAELens: the largest differences."""
    import tempfile

    from safetensors.torch import load_file
    from sparekit.sae import load_sae, save_sae

    for folder in sorted(p for p in OUT.iterdir() if p.is_dir()):
        expected = load_file(str(folder / "expected.safetensors"))
        with tempfile.TemporaryDirectory() as tmp:
            save_sae(load_sae(folder), tmp)
            sae = sae_lens.SAE.load_from_disk(tmp).eval()
            with torch.no_grad():
                z = sae.encode(expected["x"])
                recon = sae.decode(z)
        print(f"{folder.name:<20} read back by SAELens as {type(sae).__name__:<12} "
              f"max|dz| {float((z - expected['z']).abs().max()):.1e}  "
              f"max|d recon| {float((recon - expected['recon']).abs().max()):.1e}")


if __name__ == "__main__":
    main()
