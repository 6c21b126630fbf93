"""sparekit reads folders written by SAELens itself (tests/fixtures/saelens, made by
scripts/make_saelens_fixtures.py) and encodes/decodes as SAELens did, then converts them
into folders that read back the same. SAELens is not needed to run these tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparekit.sae import load_sae, save_sae

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "saelens"
CASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
ARCHITECTURE = {"standard": "standard", "standard-hf-hook": "standard", "topk": "topk", "topk-rescale": "topk",
                "jumprelu": "jumprelu", "jumprelu-b-dec-in": "jumprelu", "gated": "gated", "batchtopk": "jumprelu"}


def test_every_saelens_architecture_has_a_fixture():
    assert set(CASES) == set(ARCHITECTURE)
    assert json.loads((FIXTURES / "SOURCE.json").read_text())["sae_lens"].startswith("6.")


@pytest.mark.parametrize("case", CASES)
def test_encode_and_decode_match_saelens(case):
    expected = load_file(str(FIXTURES / case / "expected.safetensors"))
    sae = load_sae(FIXTURES / case)
    assert sae.architecture == ARCHITECTURE[case] and (sae.d_in, sae.d_sae) == (16, 32)
    assert sae.hook_layer == 6 and sae.hook_component == "resid"
    with torch.no_grad():
        z = sae.encode(expected["x"])
        recon = sae.decode(z)
    assert (z > 0).sum() > 0
    torch.testing.assert_close(z, expected["z"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recon, expected["recon"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_converted_folder_reads_back_with_the_same_codes(case, tmp_path):
    expected = load_file(str(FIXTURES / case / "expected.safetensors"))
    save_sae(load_sae(FIXTURES / case), tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg["apply_b_dec_to_input"] is False and "rescale_acts_by_decoder_norm" not in cfg
    again = load_sae(tmp_path / "out")
    with torch.no_grad():
        z = again.encode(expected["x"])
        torch.testing.assert_close(z, expected["z"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(again.decode(z), expected["recon"], atol=1e-5, rtol=1e-5)


def test_rescaled_topk_differs_from_reading_it_plainly():
    """The flag matters on this fixture: ignoring it would pick other latents."""
    expected = load_file(str(FIXTURES / "topk-rescale" / "expected.safetensors"))
    weights = load_file(str(FIXTURES / "topk-rescale" / "sae_weights.safetensors"))
    pre = (expected["x"] - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    plain = pre.topk(4, dim=-1).indices.sort(dim=-1).values
    assert not torch.equal(plain, expected["z"].topk(4, dim=-1).indices.sort(dim=-1).values)
