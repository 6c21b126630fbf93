"""One loader for every saved object: ``sparekit.load`` by ``kind``, self-contained SpARE folders,
format-1 folders (what sparekit wrote before) and the shipped assets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import sparekit
from sparekit.data.dataset import ConflictExample
from sparekit.errors import SparekitError
from sparekit.evaluation.generation import tokenize
from sparekit.hooks import Hooks, Site
from sparekit.probes import LinearProbe
from sparekit.sae import TopKSAE, load_sae, save_sae
from sparekit.steering import BehaviourData, SteeringPrompt
from sparekit.steering.gate import ProbeGate
from sparekit.steering.spare import SpARE

FIXTURES = Path(__file__).parent / "fixtures" / "format1"
ASSETS = Path(sparekit.__file__).parent / "assets"


def _behaviour(lm) -> BehaviourData:
    examples = [ConflictExample(id=str(i), question=f"q{i}", org_context=f"a{i} is here", org_answer=(f"a{i}",),
                                sub_context=f"b{i} is here", sub_answer=(f"b{i}",)) for i in range(16)]
    prompts = [SteeringPrompt(e, "sub", ()) for e in examples]
    with Hooks(lm).capture(Site(1), dtype=torch.float32) as hooks, torch.no_grad():
        lm.model(**tokenize(lm, [p.text for p in prompts]))
    labels = np.tile([1, 0], 8)
    hidden = hooks[Site(1)]
    hidden[:, 0] += torch.as_tensor(labels * 4.0 - 2.0, device=hidden.device)
    return BehaviourData(prompts, labels, {1: hidden})


def _xy(d: int = 8):
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 20)
    return rng.normal(size=(40, d)).astype(np.float32) + y[:, None], y


def test_probe_and_gate_round_trip_through_load(tmp_path):
    X, y = _xy()
    probe = LinearProbe(site="resid.3", model_hash="h1", epochs=3).fit(X, y)
    probe.save(tmp_path / "probe")
    gate = ProbeGate(probe, layer=3, threshold=0.7)
    gate.save(tmp_path / "gate", dev_auroc={3: 0.9})
    loaded_probe, loaded_gate = sparekit.load(tmp_path / "probe"), sparekit.load(tmp_path / "gate")
    assert isinstance(loaded_probe, LinearProbe) and isinstance(loaded_gate, ProbeGate)
    np.testing.assert_array_equal(loaded_probe.predict_proba(X), probe.predict_proba(X))
    assert (loaded_gate.site, loaded_gate.threshold, loaded_gate.report) == (Site(3), 0.7, {"dev_auroc": {"3": 0.9}})
    assert torch.equal(loaded_gate.fire(torch.as_tensor(X)), gate.fire(torch.as_tensor(X)))
    config = json.loads((tmp_path / "gate" / "config.json").read_text())
    assert {k: config[k] for k in ("kind", "format_version")} == {"kind": "probe_gate", "format_version": 2}
    assert set(config) == {"kind", "format_version", "sparekit_version", "params", "state"}
    with pytest.raises(SparekitError, match="another model"):
        sparekit.load(tmp_path / "gate", model_hash="h2")


def test_a_saved_spare_carries_its_sae_and_loads_after_the_sae_is_gone(tiny_llama, tmp_path):
    lm = tiny_llama
    sae = TopKSAE(d_in=lm.info.d_model, d_sae=32, k=4, hook_layer=1)
    torch.manual_seed(0)
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.copy_(sae.W_enc.T / sae.W_enc.norm(dim=0, keepdim=True).T)
        sae.input_scale.uniform_(0.5, 2.0)  # a non-trivial standardisation must travel too
    save_sae(sae, tmp_path / "sae")
    data = _behaviour(lm)
    method = SpARE(layers=(1,), sae=str(tmp_path / "sae"), mi_mass=0.5).fit(data)
    prompts = data.prompts[:3]
    with method.steer(lm, "memory", 4.0) as steered:
        before = steered.generate(prompts, max_new_tokens=4)
    method.save(tmp_path / "spare")
    shutil.rmtree(tmp_path / "sae")
    loaded = sparekit.load(tmp_path / "spare")
    assert isinstance(loaded, SpARE)
    with loaded.steer(lm, "memory", 4.0) as steered:
        assert steered.generate(prompts, max_new_tokens=4) == before
    for a, b in zip(method.selected(1), loaded.selected(1)):
        assert torch.equal(a, b)
    # a damaged copy is refused by its content hash
    tensors = load_file(str(tmp_path / "spare" / "tensors.safetensors"))
    tensors["sae.1.W_dec"] = tensors["sae.1.W_dec"] * 1.01
    save_file(tensors, str(tmp_path / "spare" / "tensors.safetensors"))
    with pytest.raises(SparekitError, match="not the SAE this method was fitted with"):
        sparekit.load(tmp_path / "spare")
    del tensors["sae.1.W_dec"]
    save_file(tensors, str(tmp_path / "spare" / "tensors.safetensors"))
    with pytest.raises(SparekitError, match="the saved SAE of layer 1 is damaged"):
        sparekit.load(tmp_path / "spare")


def test_shipped_spare_names_its_saes_by_content_hash(tmp_path):
    shipped = ASSETS / "steering" / "gemma-3-270m" / "spare" / "memory"
    method = sparekit.load(shipped)
    assert isinstance(method, SpARE) and method.sae == "default"
    config = json.loads((shipped / "config.json").read_text())
    # the shipped fp16 SAEs stay shared, not copied into each method
    assert not any(k.startswith("sae.") for k in load_file(str(shipped / "tensors.safetensors")))
    assert {info["embedded"] for info in config["state"]["saes"].values()} == {False}
    copy = tmp_path / "memory"
    shutil.copytree(shipped, copy)
    config["state"]["saes"]["9"]["sha256"] = "0" * 64
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(SparekitError, match="SAE 'default' at layer 9 is not the SAE"):
        sparekit.load(copy)


def test_format_1_folders_still_load_and_match_the_migrated_assets(tmp_path):
    """The format-1 fixtures are the probe and gate shipped before issue 29's refit: they load, and saved again in
    the current format they read back the same (the shipped ones were migrated that way, then refitted)."""
    probe = sparekit.load(FIXTURES / "probe")
    assert isinstance(probe, LinearProbe) and probe.site == "resid.13" and probe.range_ is None
    again = LinearProbe.load(probe.save(tmp_path / "probe"))
    assert again.get_params() == probe.get_params()
    assert all(torch.equal(a, b) for a, b in zip(probe.tensors().values(), again.tensors().values()))
    gate = sparekit.load(FIXTURES / "gate")
    assert isinstance(gate, ProbeGate) and gate.site == Site(10) and gate.threshold == pytest.approx(0.8170485533)
    assert gate.report["n_dev"] == 128
    gate.save(tmp_path / "gate")
    migrated = ProbeGate.load(tmp_path / "gate")
    assert (migrated.site, migrated.threshold, migrated.report) == (gate.site, gate.threshold, gate.report)
    spare = sparekit.load(FIXTURES / "spare")
    shipped_spare = sparekit.load(ASSETS / "steering" / "gemma-3-270m" / "spare" / "context")
    assert spare.get_params() == shipped_spare.get_params() and spare.layers == (9, 10, 11, 12)
    for layer in spare.layers:
        for name in ("context_idx_", "memory_idx_", "mean_context_", "mean_memory_", "mi_"):
            assert torch.equal(getattr(spare, name)[layer], getattr(shipped_spare, name)[layer])


def test_load_reads_saes_and_control_vectors_and_refuses_unknown_kinds(tmp_path):
    sae = load_sae("default", layer=6)
    again = sparekit.load(ASSETS / "saes" / "gemma-3-270m" / "resid.6")
    assert again.hook_layer == 6 and torch.equal(again.W_enc, sae.W_enc)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"kind": "linear_prob", "format_version": 2}))
    with pytest.raises(SparekitError, match="did you mean 'linear_probe'"):
        sparekit.load(tmp_path / "odd")
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"kind": "linear_probe", "format_version": 7}))
    with pytest.raises(SparekitError, match="unsupported format version 7"):
        sparekit.load(tmp_path / "odd")
    with pytest.raises(SparekitError, match="nothing to load"):
        sparekit.load(tmp_path / "missing")
