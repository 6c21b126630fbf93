"""SAE architectures own their training loss; SAE formats register a detector and a loader together."""

from __future__ import annotations

import json

import pytest
import torch

import sparekit
from sparekit.errors import SparekitError
from sparekit.sae import FORMATS, REGISTRY, BatchTopKSAE, TopKSAE, load_sae, sae_format
from sparekit.sae.train import TensorSource, TopKTrainer


def _sae(cls, seed: int = 0):
    torch.manual_seed(seed)
    sae = cls(8, 16, k=3)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
        sae.input_mean.normal_()
        sae.input_scale.uniform_(0.5, 2.0)
    return sae


@pytest.mark.parametrize("cls", [TopKSAE, BatchTopKSAE])
def test_each_architectures_training_loss_is_its_own_reconstruction(cls):
    sae, h = _sae(cls), torch.randn(32, 8) * 3
    fvu, residual, fired = sae.reconstruction_loss(h)
    code = sae.batch_encode(h) if cls is BatchTopKSAE else sae.encode(h)
    x = sae.normalize(h)
    torch.testing.assert_close(residual, x - sae.decode_normalized(code), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fvu, residual.pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert torch.equal(fired, code > 0)
    if cls is TopKSAE:
        assert (fired.sum(1) <= 3).all()
    else:
        assert int(fired.sum()) <= 3 * 32


def test_the_trainer_builds_any_trainable_architecture_and_refuses_the_rest():
    assert sorted(n for n, c in REGISTRY.items() if c.trainable) == ["batchtopk", "topk"]
    with pytest.raises(SparekitError, match="fits batchtopk or topk SAEs, not 'jumprelu'"):
        TopKTrainer(architecture="jumprelu").fit(TensorSource(torch.randn(64, 8), 32))
    trainer = TopKTrainer(d_sae=16, k=2, architecture="batchtopk", epochs=1, progress=False, device="cpu")
    assert type(trainer.fit(TensorSource(torch.randn(256, 8), 64)).sae_) is BatchTopKSAE


def test_a_new_format_is_one_registration(tmp_path):
    """A detector and a loader side by side: load_sae and sparekit.load read it, the error lists it."""
    sae = _sae(TopKSAE)
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.json").write_text(json.dumps({"k": 3}))
    torch.save({k: v for k, v in sae.state_dict().items()}, folder / "toy.pt")  # test-only format

    @sae_format("toy", "toy.json (a test format)", lambda p: p if (p / "toy.json").is_file() else None)
    def _load_toy(path):
        out = TopKSAE(8, 16, k=json.loads((path / "toy.json").read_text())["k"], hook_layer=2)
        out.load_state_dict(torch.load(path / "toy.pt", weights_only=True))
        return out

    try:
        for loaded in (load_sae(folder), sparekit.load(folder)):
            assert torch.equal(loaded.W_enc, sae.W_enc) and loaded.hook_layer == 2
        with pytest.raises(SparekitError, match=r"toy\.json \(a test format\)"):
            load_sae(tmp_path)
    finally:
        del FORMATS["toy"]
