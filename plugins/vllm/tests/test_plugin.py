"""The plugin's parts that need no vLLM: options (400s), row selection, the runtime, and the worker's hooks
driven through a fake runner shaped like vLLM's (persistent batch, ``(hidden, residual)`` layer outputs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sparekit.artifacts import save_artifact
from sparekit.errors import SparekitError
from sparekit.models.assets import SHIPPED
from sparekit.probes.linear import LinearProbe
from sparekit.utils.io import weights_hash

from sparekit_vllm.bundle import load_bundle
from sparekit.serve.options import OptionError, RowSteer, parse_options

from sparekit_vllm.options import Plan, Served
from sparekit_vllm.rows import LastToken, last_prompt_tokens
from sparekit_vllm.worker import SparekitWorkerExtension

D, LAYERS = 8, 4
CACHED_MODEL = Path.home() / ".cache/sparekit/models/gemma-3-270m"


# -- rows -------------------------------------------------------------------------------------
def test_last_prompt_tokens_across_batching_chunking_and_prefix_caching():
    # row 0: whole 5-token prompt; row 1: decoding; row 2: first chunk of 10; row 3: last chunk of 10;
    # row 4: prefix-cache hit on 6 of 7 tokens (only the last prompt token is computed)
    found = last_prompt_tokens(scheduled=[5, 1, 4, 6, 1], computed=[0, 9, 0, 4, 6], prompt_lens=[5, 7, 10, 10, 7])
    assert found == [LastToken(0, 4), LastToken(3, 5 + 1 + 4 + 5), LastToken(4, 16)]


def test_last_prompt_tokens_none_in_a_decoding_step():
    assert last_prompt_tokens([1, 1], [7, 9], [7, 5]) == []


# -- options (checked by sparekit.serve.options: tests/test_serve_options.py) ----------------------
SERVED = Served(methods={"spare": {"context": 1.0, "memory": 2.0}}, gates=frozenset({"spare"}), can_detect=True,
                probe_layer=13, first_edit_layer={"spare": 9})


def test_an_unsteered_pass_comes_first_for_a_gate_or_a_probe_above_the_edit():
    options = parse_options({"detect": True, "steer": {"toward": "memory"}}, SERVED)
    assert options.steer == RowSteer("spare", "memory", 2.0, False)
    assert SERVED.reads_first(options)  # spare edits layer 9, the probe reads 13: read the unsteered prompt
    assert not SERVED.reads_first(parse_options({"detect": True}, SERVED))
    assert not SERVED.reads_first(parse_options({"steer": {"toward": "memory"}}, SERVED))
    assert SERVED.reads_first(parse_options({"steer": {"toward": "memory", "gate": True}}, SERVED))
    below = Served(**{**SERVED.__dict__, "probe_layer": 5})
    assert not below.reads_first(options)


def test_plan_travels_in_extra_args():
    plan = Plan("k1", detect=True, steer=RowSteer("spare", "memory", 2.0))
    extra = plan.extra_args()
    assert all(isinstance(v, str) for v in extra.values())  # vllm_xargs takes strings and numbers
    assert Plan.from_extra_args({**extra, "other": 1}) == plan
    assert Plan.from_extra_args({"other": 1}) is None and Plan.from_extra_args(None) is None


# -- a fake vLLM runner ----------------------------------------------------------------------
class Block(torch.nn.Module):
    """Shaped like a vLLM decoder layer: takes and returns ``(hidden, residual)``; the stream is their sum.
    Its arithmetic is per element, so a row's result cannot depend on its batch (BLAS kernels may)."""

    def __init__(self):
        super().__init__()
        self.w, self.b = torch.nn.Parameter(torch.randn(D)), torch.nn.Parameter(torch.randn(D))

    def lin(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.w + self.b

    def forward(self, hidden, residual):
        residual = hidden if residual is None else hidden + residual
        return torch.tanh(self.lin(residual)), residual


class Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(Block() for _ in range(LAYERS))

    def forward(self, x):
        hidden, residual = x, None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        return hidden + residual


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = Inner()

    def forward(self, x):
        return self.model(x)


@torch.no_grad()
def reference(model: Model, x: torch.Tensor, edits: dict[int, tuple[list[int], object]]) -> torch.Tensor:
    """The residual stream computed the plain way, ``edits[layer] = (token indices, fn)`` applied after a layer."""
    h = x
    for i, block in enumerate(model.model.layers):
        h = torch.tanh(block.lin(h)) + h
        if i in edits:
            index, fn = edits[i]
            h = h.clone()
            h[index] = fn(h[index])
    return h


class Runner:
    """The parts of vLLM's model runner the worker reads: the persistent batch, the requests, execute_model."""

    speculative_config = None

    def __init__(self):
        torch.manual_seed(0)
        self.model = Model()
        self.requests: dict = {}
        self.input_batch = SimpleNamespace(req_ids=[], num_computed_tokens_cpu=np.zeros(0, np.int32),
                                           num_prompt_tokens=np.zeros(0, np.int32))

    def get_model(self):
        return self.model

    @torch.no_grad()
    def execute_model(self, scheduler_output, x):
        return self.model(x)

    def step(self, rows: list[tuple[str, int, int, int, Plan | None]], x: torch.Tensor) -> torch.Tensor:
        """``rows``: (request id, scheduled, computed, prompt length, plan)."""
        for rid, _, _, _, plan in rows:
            self.requests[rid] = SimpleNamespace(sampling_params=SimpleNamespace(
                extra_args=plan.extra_args() if plan else None))
        self.input_batch = SimpleNamespace(req_ids=[r[0] for r in rows],
                                           num_computed_tokens_cpu=np.array([r[2] for r in rows]),
                                           num_prompt_tokens=np.array([r[3] for r in rows]))
        return self.execute_model(SimpleNamespace(num_scheduled_tokens={r[0]: r[1] for r in rows}), x)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """An actadd method (layer 1) with its gate (layer 2), and probes at layers 0 and 3, saved as sparekit saves."""
    root = tmp_path_factory.mktemp("assets")
    torch.manual_seed(1)
    X, y = torch.randn(64, D), torch.tensor([0, 1] * 32)
    probe = LinearProbe(epochs=2, site="resid.3").fit(X + y[:, None], y)
    probe.save(root / "probes/conflict")
    LinearProbe(epochs=2, site="resid.0").fit(X - y[:, None], y).save(root / "probes/source")
    (root / "probes/detect.json").write_text(json.dumps({"demos": []}))
    for toward in ("context", "memory"):  # a fitted bundle's layout (sparekit.steering.fitted)
        save_artifact(root / f"fitted/actadd/{toward}", "actadd", {"layer": 1}, {"vector_": torch.ones(D)})
    save_artifact(root / "fitted/actadd", "fitted_steering",
                  {"label": "actadd", "tuned": {"context": {"strength": 2.0}, "memory": {"strength": None}}}, {})
    gate_probe = LinearProbe(epochs=2, site="resid.2").fit(X + y[:, None], y)
    save_artifact(root / "fitted/actadd/gate", "probe_gate",
                  {"layer": 2, "threshold": 0.5, "probe": gate_probe.get_params()}, gate_probe.tensors(),
                  {"n_features_in": D})
    return {"probes": root / "probes", "fitted": root / "fitted/actadd"}


@pytest.fixture()
def worker(folders, monkeypatch):
    monkeypatch.setenv("SPAREKIT_VLLM_PROBES", str(folders["probes"]))
    monkeypatch.setenv("SPAREKIT_VLLM_FITTED", str(folders["fitted"]))
    monkeypatch.delenv("SPAREKIT_VLLM_MODEL", raising=False)
    ext = SparekitWorkerExtension()
    ext.model_runner = Runner()
    assert ext.sparekit_install() == [0, 1, 2, 3]
    return ext


def test_steering_edits_only_its_request_at_its_last_prompt_token(worker):
    runner = worker.model_runner
    x = torch.randn(12, D)
    steer = RowSteer("actadd", "memory", 2.0)
    # a 5-token prompt (steered), a decoding request, and a final 6-token chunk (unsteered plan)
    out = runner.step([("a", 5, 0, 5, Plan("ka", steer=steer)), ("b", 1, 9, 4, None),
                       ("c", 6, 4, 10, Plan("kc"))], x)
    shift = lambda h: h - 2.0 * torch.ones(D)  # noqa: E731 (actadd toward memory: minus strength × vector)
    expected = reference(runner.model, x, {1: ([4], shift)})
    assert torch.equal(out, expected)
    assert torch.equal(out[5:], reference(runner.model, x, {})[5:])  # the other requests: bit-identical


def test_detection_reads_the_probes_at_the_last_prompt_token(worker, folders):
    runner = worker.model_runner
    x = torch.randn(7, D)
    runner.step([("a", 3, 0, 3, None), ("b", 4, 0, 4, Plan("kb", detect=True))], x)
    stream, states = x, {}
    for i, block in enumerate(runner.model.model.layers):
        stream = torch.tanh(block.lin(stream)) + stream
        states[i] = stream[6:7]
    conflict = LinearProbe.load(folders["probes"] / "conflict").predict_proba(states[3].detach().numpy())[0, 1]
    source = LinearProbe.load(folders["probes"] / "source").predict_proba(states[0].detach().numpy())[0, 1]
    reading = worker.sparekit_take("kb")
    assert reading["probes"]["conflict_probability"] == pytest.approx(conflict, abs=1e-6)
    assert reading["probes"]["context_probability"] == pytest.approx(source, abs=1e-6)
    assert reading["fired"] is None
    assert worker.sparekit_take("kb") is None  # taken once


def test_gate_reading_and_mixed_batch_equal_each_request_alone(worker):
    runner = worker.model_runner
    x = torch.randn(9, D)
    plans = [Plan("k0", gate="actadd"), Plan("k1", steer=RowSteer("actadd", "context", 1.0)),
             Plan("k2", steer=RowSteer("actadd", "memory", 4.0))]
    together = runner.step([(f"r{i}", 3, 0, 3, plan) for i, plan in enumerate(plans)], x)
    assert isinstance(worker.sparekit_take("k0")["fired"], bool)
    for i, plan in enumerate(plans):
        alone = runner.step([("solo", 3, 0, 3, plan)], x[3 * i:3 * i + 3])
        assert torch.equal(together[3 * i:3 * i + 3], alone)


def test_a_step_without_plans_is_untouched(worker):
    runner = worker.model_runner
    x = torch.randn(4, D)
    assert torch.equal(runner.step([("a", 4, 0, 4, None)], x), reference(runner.model, x, {}))


# -- the shipped assets and the import boundary -----------------------------------------------
@pytest.mark.skipif(not (CACHED_MODEL / "sparekit_source.json").is_file(), reason="default model not cached")
def test_the_shipped_assets_load_for_the_default_model():
    bundle = load_bundle(CACHED_MODEL)
    caps = bundle.capabilities()
    assert caps.can_detect and not caps.gates  # the shipped SpARE gates on recall, which the plugin does not run
    with pytest.raises(OptionError, match="has no conflict gate this server runs"):
        parse_options({"steer": {"method": "spare", "toward": "memory", "gate": True}}, caps)
    assert caps.methods == {"spare": {"context": 1.0, "memory": 2.0}}  # the bundle's dev-tuned strengths
    edits = bundle.edits(RowSteer("spare", "memory", 2.0))
    assert sorted(edits) == [9, 10, 11, 12]
    h = torch.randn(2, 640) * 100
    assert edits[9](h).shape == h.shape and not torch.equal(edits[9](h), h)
    assert load_bundle(None).capabilities().methods == {}  # another model: the shipped assets do not apply


def test_a_fitted_bundle_gives_its_tuned_strengths_and_its_gate(folders):
    caps = load_bundle(None, folders["probes"], [folders["fitted"]]).capabilities()
    assert caps.methods == {"actadd": {"context": 2.0, "memory": 4.0}}  # memory: no tuned strength, actadd's default
    assert caps.gates == {"actadd"} and caps.first_edit_layer == {"actadd": 1} and caps.probe_layer == 3


def test_a_bundle_tuned_on_another_model_is_refused_at_load(folders, tmp_path):
    """As the built-in engine refuses it: the served model's hash is the one sparekit gives the same ``--model``."""
    served = tmp_path / "served"  # a save_pretrained folder: hashed from its weight files, as sparekit hashes it
    served.mkdir()
    (served / "model.safetensors").write_bytes(b"weights")
    theirs = tmp_path / "fitted/theirs"
    shutil.copytree(folders["fitted"], theirs, ignore=shutil.ignore_patterns("gate"))
    for recorded, model, refused in ((weights_hash(served), served, False), ("a" * 64, served, True),
                                     ("hub:google/gemma-3-270m", "google/gemma-3-270m", False),
                                     ("hub:google/gemma-3-270m", served, True), ("a" * 64, None, False)):
        config = json.loads((theirs / "config.json").read_text())
        config["params"]["model_hash"] = recorded
        (theirs / "config.json").write_text(json.dumps(config))
        if refused:
            refusal = r"theirs was tuned on another model \(hash [0-9a-z:/]{12}…, this model "
            with pytest.raises(SparekitError, match=refusal) as err:
                load_bundle(model, fitted=[theirs])
            assert "\n" not in str(err.value)
        else:
            assert load_bundle(model, fitted=[theirs]).capabilities().methods == {"theirs": {"context": 2.0,
                                                                                             "memory": 4.0}}


@pytest.mark.skipif(not (CACHED_MODEL / "sparekit_source.json").is_file(), reason="default model not cached")
def test_the_default_models_cached_folder_goes_by_the_hash_sparekit_records(folders, tmp_path):
    theirs = tmp_path / "fitted/theirs"
    shutil.copytree(folders["fitted"], theirs, ignore=shutil.ignore_patterns("gate"))
    for recorded, accepted in ((SHIPPED["gemma-3-270m"], True), ("b" * 64, False)):
        config = json.loads((theirs / "config.json").read_text())
        config["params"]["model_hash"] = recorded
        (theirs / "config.json").write_text(json.dumps(config))
        if accepted:
            assert "theirs" in load_bundle(CACHED_MODEL, fitted=[theirs]).capabilities().methods
        else:
            with pytest.raises(SparekitError, match="tuned on another model"):
                load_bundle(CACHED_MODEL, fitted=[theirs])


def test_the_plugin_imports_no_transformers_dependent_sparekit_code():
    code = ("import sys, sparekit_vllm.api, sparekit_vllm.worker, sparekit_vllm.plugin; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'sklearn') "
            "or m in ('sparekit.models.loading', 'sparekit.hooks.core', 'sparekit.steering', 'sparekit.serve.engine', "
            "'sparekit.serve.app')); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    assert out.stdout.strip() == "[]"
