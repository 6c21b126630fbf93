"""SAE formats, save/load, training and evaluation (tiny models and synthetic data)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from sparekit.errors import SparekitError
from sparekit.sae import SAE, TopKSAE, folded, load_sae, register, save_sae
from sparekit.sae.evaluate import loss_recovered, reconstruction_stats, top_activations
from sparekit.sae.train import TensorSource, TopKTrainer

D_IN, D_SAE, K = 64, 96, 8


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(0, 0.3, (D_IN, D_SAE)).astype(np.float32),
        "W_dec": rng.normal(0, 0.3, (D_SAE, D_IN)).astype(np.float32),
        "b_enc": rng.normal(0, 0.1, D_SAE).astype(np.float32),
        "b_dec": rng.normal(0, 0.1, D_IN).astype(np.float32),
        "threshold": rng.uniform(0.05, 0.3, D_SAE).astype(np.float32),
    }


def _reference(w: dict, x: np.ndarray, kind: str, sub_b_dec: bool = False) -> np.ndarray:
    """The published encode/decode formulas, written independently of sparekit."""
    pre = (x - w["b_dec"] if sub_b_dec else x) @ w["W_enc"] + w["b_enc"]
    if kind == "jumprelu":
        z = np.maximum(pre, 0) * (pre > w["threshold"])
    else:
        z = np.maximum(pre, 0)
        cut = np.sort(z, axis=1)[:, -K][:, None]
        z = np.where(z >= cut, z, 0)
    return z @ w["W_dec"] + w["b_dec"]


def _t(w):
    return {k: torch.from_numpy(v) for k, v in w.items()}


def write_saelens(folder, w, architecture):
    folder.mkdir(parents=True)
    keys = ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if architecture == "jumprelu" else [])
    save_file({k: torch.from_numpy(w[k]) for k in keys}, str(folder / "sae_weights.safetensors"))
    cfg = {"architecture": architecture, "d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": False,
           "normalize_activations": "none", "metadata": {"hook_name": "blocks.2.hook_resid_post"}}
    if architecture == "topk":
        cfg["k"] = K
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def write_gemmascope(root, w):
    folder = root / "layer_2" / "width_16k" / "average_l0_10"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **w)
    return folder / "params.npz"


def write_gemmascope2(root, w):
    folder = root / "resid_post" / "layer_9_width_16k_l0_small"
    folder.mkdir(parents=True)
    save_file({k.lower(): torch.from_numpy(v) for k, v in w.items()}, str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps({"hf_hook_point_in": "model.layers.2.output"}))
    return folder


def write_sparsify(root, w):
    folder = root / "layers.2"
    folder.mkdir(parents=True)
    save_file({"encoder.weight": torch.from_numpy(w["W_enc"].T.copy()), "encoder.bias": torch.from_numpy(w["b_enc"]),
               "W_dec": torch.from_numpy(w["W_dec"]), "b_dec": torch.from_numpy(w["b_dec"])},
              str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"activation": "topk", "expansion_factor": 32, "num_latents": D_SAE,
                                                 "k": K, "multi_topk": False, "skip_connection": False, "d_in": D_IN}))
    return folder


FORMATS = {
    "saelens-jumprelu": (lambda root, w: write_saelens(root / "sl", w, "jumprelu"), "jumprelu", False),
    "saelens-topk": (lambda root, w: write_saelens(root / "sl", w, "topk"), "topk", False),
    "gemmascope": (write_gemmascope, "jumprelu", False),
    "gemmascope2": (write_gemmascope2, "jumprelu", False),
    "sparsify": (write_sparsify, "topk", True),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_loads_and_reconstructs_like_the_reference(tmp_path, fmt):
    write, kind, sub_b_dec = FORMATS[fmt]
    w = _weights()
    sae = load_sae(write(tmp_path, w))
    x = np.random.default_rng(1).normal(0, 1, (20, D_IN)).astype(np.float32)
    expected = _reference(w, x, kind, sub_b_dec)
    np.testing.assert_allclose(sae(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-4, atol=1e-4)
    assert sae.hook_layer == 2 and sae.site.layer == 2
    assert sae.architecture == kind


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_convert_to_saelens_keeps_reconstruction(tmp_path, fmt):
    write, _, _ = FORMATS[fmt]
    original = load_sae(write(tmp_path, _weights(3)))
    save_sae(original, tmp_path / "converted")
    again = load_sae(tmp_path / "converted")
    x = torch.randn(10, D_IN)
    torch.testing.assert_close(again(x), original(x), rtol=1e-4, atol=1e-4)
    assert again.architecture == original.architecture and again.hook_layer == original.hook_layer


def _standardised_topk(seed: int = 0) -> TopKSAE:
    torch.manual_seed(seed)
    sae = TopKSAE(D_IN, D_SAE, k=K, hook_layer=1)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
        sae.input_mean.normal_(0, 5)
        sae.input_scale.uniform_(0.5, 40)
    return sae


def test_save_load_round_trip_folds_standardisation_exactly(tmp_path):
    sae = _standardised_topk()
    save_sae(sae, tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    h = torch.randn(16, D_IN) * 10 + sae.input_mean
    torch.testing.assert_close(loaded(h), sae(h), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(loaded.pre_acts(h), sae.pre_acts(h), rtol=1e-4, atol=1e-4)
    z = sae.pre_acts(h)
    torch.testing.assert_close(loaded.decode_delta(z), sae.decode_delta(z), rtol=1e-4, atol=1e-3)
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["sparekit"]["kind"] == "sae" and cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"


def test_decode_delta_is_decode_without_bias():
    sae = _standardised_topk(1)
    z = torch.relu(torch.randn(5, D_SAE))
    torch.testing.assert_close(sae.decode_delta(z), sae.decode(z) - sae.decode(torch.zeros_like(z)), rtol=1e-4,
                               atol=1e-3)


def test_folded_topk_code_matches_and_fp16_save_stays_close(tmp_path):
    sae = _standardised_topk(2)
    h = torch.randn(32, D_IN) * 10 + sae.input_mean
    assert torch.equal(folded(sae).encode(h) > 0, sae.encode(h) > 0)
    save_sae(sae, tmp_path / "half", dtype=torch.float16)
    half = load_sae(tmp_path / "half")
    err = (half(h) - sae(h)).norm() / sae(h).norm()
    assert err < 1e-2


def test_missing_key_names_key_and_file(tmp_path):
    w = _weights()
    folder = write_saelens(tmp_path / "sl", w, "jumprelu")
    save_file({k: torch.from_numpy(w[k]) for k in ("W_enc", "W_dec", "b_enc", "b_dec")},
              str(folder / "sae_weights.safetensors"))
    with pytest.raises(SparekitError, match=r"threshold.*sae_weights\.safetensors"):
        load_sae(folder)
    with pytest.raises(SparekitError, match=r"'k'.*cfg\.json"):
        cfg = json.loads((folder / "cfg.json").read_text())
        (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "topk"}))
        load_sae(folder)


def test_width_and_layer_mismatch_are_clear_errors(tmp_path, tiny_llama):
    folder = write_saelens(tmp_path / "sl", _weights(), "topk")
    assert load_sae(folder, model_info=tiny_llama.info).d_in == tiny_llama.info.d_model == D_IN
    with pytest.raises(SparekitError, match="layer 7 is out of range"):
        load_sae(folder, layer=7, model_info=tiny_llama.info)
    narrow = TopKSAE(32, 48, k=4, hook_layer=1)
    save_sae(narrow, tmp_path / "narrow")
    with pytest.raises(SparekitError, match="width 32.*d_model 64"):
        load_sae(tmp_path / "narrow", model_info=tiny_llama.info)
    with pytest.raises(SparekitError, match="no SAE found"):
        load_sae(tmp_path)


def test_registry_refuses_duplicates_and_unknown_architectures(tmp_path):
    with pytest.raises(RuntimeError, match="registered twice"):
        register("topk")(type("Again", (SAE,), {}))
    folder = write_saelens(tmp_path / "sl", _weights(), "topk")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "matryoshka"}))
    with pytest.raises(SparekitError, match="unknown SAE architecture 'matryoshka'"):
        load_sae(folder)


def _sparse_problem(n=12000, d=32, m=64, s=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = F.normalize(torch.randn(m, d, generator=g), dim=1)
    idx = torch.rand(n, m, generator=g).argsort(1)[:, :s]
    codes = torch.zeros(n, m).scatter_(1, idx, torch.rand(n, s, generator=g) * 2 + 0.5)
    return codes @ D * 3 + 5, D


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_trainer_lowers_fvu_and_recovers_dictionary(architecture):
    X, D = _sparse_problem()
    trainer = TopKTrainer(d_sae=128, k=3, architecture=architecture, epochs=6, lr=3e-3, dead_tokens=4000,
                          progress=False).fit(TensorSource(X, 256))
    assert trainer.sae_.k == 3
    fvu = [h["fvu"] for h in trainer.history_]
    assert np.mean(fvu[-10:]) < 0.5 * np.mean(fvu[:10])
    W = F.normalize(folded(trainer.sae_).W_dec, dim=1).cpu()  # the trainer uses CUDA when present
    assert ((D @ W.T).max(1).values > 0.9).float().mean() > 0.85
    assert torch.allclose(trainer.sae_.W_dec.norm(dim=1).cpu(), torch.ones(128), atol=1e-4)


def test_trainer_resumes_from_checkpoint_to_the_same_weights(tmp_path):
    X, _ = _sparse_problem(n=4096)
    kwargs = dict(d_sae=64, k=3, epochs=2, lr=3e-3, dead_tokens=500, progress=False, seed=3)
    reference = TopKTrainer(**kwargs).fit(TensorSource(X, 256)).sae_

    class Interrupted(TensorSource):
        def __call__(self, epoch):
            for i, x in enumerate(super().__call__(epoch)):
                if epoch == 1 and i == 5:
                    raise KeyboardInterrupt
                yield x

    with pytest.raises(KeyboardInterrupt):
        TopKTrainer(**kwargs, checkpoint_dir=tmp_path, checkpoint_every=4).fit(Interrupted(X, 256))
    assert json.loads((tmp_path / "checkpoint.json").read_text())["step"] == 20
    resumed = TopKTrainer(**kwargs, checkpoint_dir=tmp_path, checkpoint_every=4).fit(TensorSource(X, 256))
    assert len(resumed.history_) == 32
    torch.testing.assert_close(resumed.sae_.W_dec, reference.W_dec)
    with pytest.raises(SparekitError, match="different trainer settings"):
        TopKTrainer(**{**kwargs, "k": 4}, checkpoint_dir=tmp_path).fit(TensorSource(X, 256))


def _identity_sae(d: int, layer: int) -> SAE:
    """A ReLU SAE that reconstructs exactly: latents +x and -x."""
    from sparekit.sae import ReluSAE

    sae = ReluSAE(d, 2 * d, hook_layer=layer)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


TEXTS = ["the cat sat on the mat and looked around", "a quick brown fox jumps over lazy dogs", "hello world, again"]


def test_loss_recovered_is_one_for_exact_and_zero_for_null_reconstruction(tiny_llama):
    exact = _identity_sae(tiny_llama.info.d_model, 1)
    null = _identity_sae(tiny_llama.info.d_model, 1)
    with torch.no_grad():
        null.W_dec.zero_()
    exact_r, null_r = loss_recovered(tiny_llama, [exact, null], TEXTS, batch_size=2, max_tokens=None)
    assert exact_r["ce_spliced"] == pytest.approx(exact_r["ce_clean"], abs=1e-4)
    assert exact_r["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert null_r["loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert null_r["ce_zero"] != pytest.approx(null_r["ce_clean"])
    stats = reconstruction_stats(tiny_llama, [exact], TEXTS)[0]
    assert stats["fvu"] < 1e-8 and stats["dead_fraction"] < 1


def test_top_activations_sorted_and_point_at_tokens(tiny_llama):
    sae = _identity_sae(tiny_llama.info.d_model, 2)
    found = top_activations(tiny_llama, sae, TEXTS, latents=[0, 5], top=3)
    for rows in found.values():
        values = [r["activation"] for r in rows]
        assert values == sorted(values, reverse=True) and len(rows) <= 3
        for r in rows:
            assert r["token_activations"][r["focus"]] == pytest.approx(r["activation"])


def test_cli_convert_writes_a_saelens_folder(tmp_path, capsys):
    from sparekit.cli.main import main

    source = write_gemmascope(tmp_path / "gs", _weights(4))
    assert main(["sae", "convert", str(source), str(tmp_path / "out"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layer"] == 2
    x = torch.randn(4, D_IN)
    torch.testing.assert_close(load_sae(tmp_path / "out")(x), load_sae(source)(x), rtol=1e-4, atol=1e-4)
    assert main(["sae", "convert", str(tmp_path / "nothing"), str(tmp_path / "o2")]) == 2


@pytest.mark.slow
def test_shipped_saes_read_the_default_model(default_lm):
    from sparekit.evaluation.generation import tokenize
    from sparekit.hooks import Hooks, Site
    from sparekit.sae import shipped_layers

    layers = shipped_layers()
    assert len(layers) >= 4
    text = ("The Eiffel Tower is in Paris, the capital of France. It was built by Gustave Eiffel's company for "
            "the 1889 World's Fair and is one of the most visited monuments in the world.")
    enc = tokenize(default_lm, [text])
    hooks = Hooks(default_lm)
    for layer in layers:
        hooks.capture(Site(layer), positions="all")
    with torch.inference_mode(), hooks.stop_after_captures():
        default_lm.model(**enc)
    for layer in layers:
        h = hooks[Site(layer)][0, 1:]  # BOS excluded, as in training
        sae = load_sae("default", layer=layer, model_info=default_lm.info).to(h.device)
        with torch.inference_mode():
            z = sae.encode(h)
            fvu = (h - sae.decode(z)).pow(2).sum() / (h - h.mean(0)).pow(2).sum()
        assert (z > 0).sum(1).max() <= sae.k and sae.pre_acts(h).shape == (h.shape[0], sae.d_sae)
        # Held-out FVU over 8,825 tokens is 0.20-0.35 (BENCHMARKS.md); measured against one text's own
        # (smaller) variance it is higher (0.21-0.68 here). A mismatched or untrained SAE gives >= 1.
        assert fvu < 0.8, f"layer {layer}: FVU {fvu:.3f}"
        shuffled = sae.decode(z[:, torch.randperm(z.shape[1], generator=torch.Generator().manual_seed(0))])
        assert (h - shuffled).pow(2).sum() / (h - h.mean(0)).pow(2).sum() > 1.5 * fvu


def test_corpus_holds_out_question_groups_without_overlap(nqswap_path):
    from sparekit.sae.corpus import nqswap_passages

    train, held = nqswap_passages(nqswap_path, holdout=0.1, seed=0)
    assert not set(train) & set(held) and len(set(train)) == len(train)
    assert 0.05 < len(held) / (len(train) + len(held)) < 0.2
    assert not any("<P>" in p or "</P>" in p for p in train + held)
    assert nqswap_passages(nqswap_path, holdout=0.1, seed=1)[1] != held


def test_gemma_scope_2_loads_by_its_saelens_name_from_the_hub_layout(tmp_path, monkeypatch):
    """The hub is not reachable here: a fixture folder with the hub repository's layout stands in for it."""
    import huggingface_hub

    w = _weights()
    repo_root = tmp_path / "hub"
    folder = repo_root / "resid_post_all" / "layer_9_width_16k_l0_medium"
    folder.mkdir(parents=True)
    save_file({k.lower(): torch.from_numpy(v) for k, v in w.items()}, str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps({"hf_hook_point_in": "model.layers.9.output"}))
    asked = []

    def download(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        return str(repo_root / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    sae = load_sae("gemma-scope-2-270m-pt-res-all/layer_9_width_16k_l0_medium")
    assert asked == [("google/gemma-scope-2-270m-pt", "resid_post_all/layer_9_width_16k_l0_medium/params.safetensors"),
                     ("google/gemma-scope-2-270m-pt", "resid_post_all/layer_9_width_16k_l0_medium/config.json")]
    assert sae.architecture == "jumprelu" and sae.hook_layer == 9 and sae.d_sae == D_SAE
    x = np.random.default_rng(1).normal(0, 1, (5, D_IN)).astype(np.float32)
    np.testing.assert_allclose(sae(torch.from_numpy(x)).detach().numpy(), _reference(w, x, "jumprelu", False),
                               rtol=1e-4, atol=1e-4)


def test_gemma_scope_2_without_the_hub_is_one_line(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id, filename, **kwargs):
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache and outgoing traffic "
                                      "has been disabled.\nmore")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(SparekitError, match=r"cannot fetch gemma-scope-2-270m-pt-res/layer_5_width_16k_l0_small "
                                            r"\(google/gemma-scope-2-270m-pt/resid_post/") as err:
        load_sae("gemma-scope-2-270m-pt-res/layer_5_width_16k_l0_small")
    assert "\n" not in str(err.value)
    with pytest.raises(SparekitError, match="missing SAE path"):  # not a release name: read as a path
        load_sae("gemma-scope-2-270m-pt-res/not_an_sae_id")
