"""The fitted bundle: one folder layout for what the benchmark exports, `steer`, `serve`, `export` and the
shipped assets read; `sparekit.load` the one loader, refusing what a caller did not ask for in one line."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sparekit
from sparekit.cli.main import main
from sparekit.data.dataset import ConflictExample
from sparekit.errors import SparekitError
from sparekit.models.tiny import tiny_model
from sparekit.probes.linear import LinearProbe
from sparekit.steering import (BehaviourData, Combined, FittedBundle, FittedSteering, SteeringMethod, SteeringPrompt,
                               make_method)
from sparekit.steering.fitted import shipped_root
from sparekit.steering.gate import ProbeGate, RecallGate
from sparekit.utils.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
DEMO = "context: Paris is in France.\nquestion: Where is Paris?\nanswer: France\n\n"


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def bundle(lm) -> FittedBundle:
    """actadd at layer 1 per direction (different strengths) and a gate at layer 2 that fires on some rows."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, lm.info.d_model)).astype(np.float32), np.tile([0, 1], 32)
    behaviour = BehaviourData(prompts=[], labels=y, hidden={1: torch.as_tensor(X) * 4})
    probe = LinearProbe(seed=0, site="resid.2", model_hash=lm.info.model_hash, epochs=5).fit(X, y)
    directions = {"memory": FittedSteering(make_method("actadd", layer=1).fit(behaviour), 4.0, (DEMO,), {"layer": 1},
                                           0.5),
                  "context": FittedSteering(make_method("actadd", layer=1).fit(behaviour), 2.0, (DEMO,))}
    return FittedBundle("actadd", directions, (DEMO,), lm.info.model_hash,  # type: ignore[arg-type]
                        ProbeGate(probe, layer=2, threshold=0.5))


def _answers(lm, bundle: FittedBundle) -> list[str]:
    prompts = [SteeringPrompt(ConflictExample(id=str(i), question=f"Where is {town}?", org_context=f"{town} is here.",
                                              org_answer=(), sub_context=f"{town} is there.", sub_answer=()),
                              "sub", bundle.demos) for i, town in enumerate(["Paris", "Rome", "Oslo"])]
    out = []
    for toward, fitted in bundle.directions.items():
        with fitted.method.steer(lm, toward=toward, strength=fitted.strength, gate=bundle.gate) as steered:
            out += steered.generate(prompts)
    return out


def test_a_saved_bundle_loads_back_and_generates_the_same(lm, bundle, tmp_path):
    folder = bundle.save(tmp_path / "actadd")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "context", "gate", "memory",
                                                         "tensors.safetensors"]
    loaded = sparekit.load(folder, model_hash=lm.info.model_hash)
    assert isinstance(loaded, FittedBundle) and loaded.folder == folder and loaded.demos == (DEMO,)
    assert (loaded["memory"].strength, loaded["memory"].params, loaded["memory"].dev_em) == (4.0, {"layer": 1}, 0.5)
    assert loaded["context"].strength == 2.0 and loaded.require_gate().threshold == 0.5
    assert _answers(lm, loaded) == _answers(lm, bundle)
    # saved again over itself: replaced whole, no temporary folder left beside it
    loaded.save(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["actadd"]


def test_a_bundle_gated_on_recall_records_only_the_gates_name(lm, bundle, tmp_path):
    recall = FittedBundle("actadd+recall", bundle.directions, bundle.demos, lm.info.model_hash, RecallGate())
    folder = recall.save(tmp_path / "actadd+recall")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "context", "memory", "tensors.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["params"]["gate"] == "recall"
    loaded = FittedBundle.load(folder, lm.info.model_hash)
    assert isinstance(loaded.require_gate(), RecallGate) and loaded["memory"].strength == 4.0
    assert "gate" not in json.loads((bundle.save(tmp_path / "probe") / "config.json").read_text())["params"]
    config["params"]["gate"] = "recal"
    atomic_write_json(folder / "config.json", config)
    with pytest.raises(SparekitError, match="unknown training-free gate 'recal'"):
        FittedBundle.load(folder)


def test_a_failed_save_leaves_the_old_bundle_whole(bundle, tmp_path, monkeypatch):
    folder = bundle.save(tmp_path / "actadd")
    before = (folder / "config.json").read_text()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ProbeGate, "save", broken)
    with pytest.raises(OSError):
        FittedBundle("other", bundle.directions, (), None, bundle.gate).save(folder)
    assert (folder / "config.json").read_text() == before and [p.name for p in tmp_path.iterdir()] == ["actadd"]


def test_load_refuses_what_the_caller_did_not_ask_for_in_one_line(lm, bundle, tmp_path):
    folder = bundle.save(tmp_path / "actadd")
    assert isinstance(sparekit.load(folder / "memory", expect=SteeringMethod), SteeringMethod)
    with pytest.raises(SparekitError, match=r"holds a 'probe_gate' \(ProbeGate\), not a SteeringMethod"):
        sparekit.load(folder / "gate", expect=SteeringMethod)
    with pytest.raises(SparekitError, match=r"holds a 'fitted_steering' \(FittedBundle\), not a SteeringMethod"):
        sparekit.load(folder, expect=SteeringMethod)
    with pytest.raises(SparekitError, match=r"no saved SteeringMethod at .* \(no config.json naming a kind\)"):
        sparekit.load(tmp_path, expect=SteeringMethod)
    with pytest.raises(SparekitError, match="holds a 'probe_gate', not a 'fitted_steering'"):
        FittedBundle.load(folder / "gate")
    with pytest.raises(SparekitError, match="was tuned on another model"):
        FittedBundle.load(folder, model_hash="0" * 64)
    with pytest.raises(SparekitError, match="no fitted method for direction 'memory'"):
        FittedBundle("x", {"context": bundle["context"]})["memory"]  # type: ignore[index]


def _old_layout(tmp_path: Path, gate: ProbeGate) -> Path:
    """The shipped SpARE in the layout before bundles: tuned.json per direction, a probe gate beside the label."""
    root = tmp_path / "steering" / "spare"
    bundle = FittedBundle.load(shipped_root("spare"))
    for toward, fitted in bundle.directions.items():
        fitted.method.save(root / toward)
        atomic_write_json(root / toward / "tuned.json", {"params": fitted.params, "strength": fitted.strength,
                                                         "dev_em": fitted.dev_em, "toward": toward, "label": "spare",
                                                         "model_hash": bundle.model_hash,
                                                         "demos": list(bundle.demos)})
    gate.save(root.parent / "gate")
    return root


def test_an_old_folder_is_one_error_line_and_the_migration_rewrites_it(tmp_path, capsys, bundle):
    old = _old_layout(tmp_path, bundle.gate)
    reference = bundle.gate.save(tmp_path / "reference-gate")
    assert main(["export", "control-vector", str(old), "--out", str(tmp_path / "v.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "fitted folder of an older sparekit (tuned.json per direction)" in err
    assert "scripts/migrate_artifacts.py" in err and not (tmp_path / "v.gguf").exists()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "migrate_artifacts.py"), str(tmp_path / "steering")],
                   check=True, capture_output=True, env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    migrated, shipped = FittedBundle.load(old), FittedBundle.load(shipped_root("spare"))
    assert not (old / "memory" / "tuned.json").exists() and migrated.demos == shipped.demos
    for toward in ("memory", "context"):
        assert (migrated[toward].strength, migrated[toward].params) == (shipped[toward].strength,  # type: ignore
                                                                        shipped[toward].params)  # type: ignore
    assert json.loads((old / "gate" / "config.json").read_text())["params"] == \
        json.loads((reference / "config.json").read_text())["params"]


def test_the_shipped_assets_are_one_bundle_with_the_tuned_numbers():
    shipped = FittedBundle.load(shipped_root("spare"))
    assert (shipped["memory"].strength, shipped["context"].strength) == (2.0, 1.0)
    assert (shipped["memory"].dev_em, shipped["context"].dev_em) == (0.578125, 0.90625)
    assert isinstance(shipped.require_gate(), RecallGate) and shipped.label == "spare"  # the default detector's
    assert not list(shipped_root("spare").rglob("gate"))  # named in config.json: no gate folder anywhere


def test_the_shipped_decoding_bundles_are_what_their_script_writes(tmp_path):
    """CAD and AdaCAD ship as settings only: their strengths, the recall gate by name, the shipped SpARE's
    demonstrations (the same prompt whichever shipped method steers); the script rewrites them byte for byte."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "ship_decoding_bundles.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    spare = FittedBundle.load(shipped_root("spare"))
    for kind, strength in (("cad", 0.5), ("adacad", 1.0)):
        shipped = FittedBundle.load(shipped_root(kind), spare.model_hash)
        assert isinstance(shipped.gate, RecallGate) and shipped.demos == spare.demos and shipped.label == kind
        assert [(shipped[t].method.kind, shipped[t].strength) for t in ("memory", "context")] == [(kind, strength)] * 2
        files = sorted(p.relative_to(shipped_root(kind)) for p in shipped_root(kind).rglob("*") if p.is_file())
        assert files and files == sorted(p.relative_to(tmp_path / kind) for p in (tmp_path / kind).rglob("*")
                                         if p.is_file())
        assert all((tmp_path / kind / f).read_bytes() == (shipped_root(kind) / f).read_bytes() for f in files)


def test_the_shipped_spare_cad_bundle_is_what_its_script_writes(tmp_path):
    """SpARE + CAD ships as a combination per direction (SpARE's features naming the shipped SAEs, CAD at 0.5), the
    recall gate by name and the shipped SpARE's demonstrations; the script, given it, rewrites it byte for byte."""
    root = shipped_root("spare+cad")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "ship_run_bundle.py"), str(root), "--out",
                    str(tmp_path)], check=True, capture_output=True, env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    shipped = FittedBundle.load(root, FittedBundle.load(shipped_root("spare")).model_hash)
    assert isinstance(shipped.gate, RecallGate) and shipped.demos == FittedBundle.load(shipped_root("spare")).demos
    for toward in ("memory", "context"):
        method = shipped[toward].method
        assert isinstance(method, Combined) and (method.first.kind, method.second.kind) == ("spare", "cad")
        assert method.second_strength == 0.5 and not method.fallback and method.first.sae == "default"
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "spare+cad") for p in (tmp_path / "spare+cad").rglob("*")
                           if p.is_file())
    assert all((tmp_path / "spare+cad" / f).read_bytes() == (root / f).read_bytes() for f in files)


def test_a_run_bundle_ships_with_the_shipped_demos_and_the_gate_it_is_given(tmp_path):
    """`ship_run_bundle.py <run>/fitted/spare+gate --gate-from cad`: shipped as `spare`, with the shipped
    SpARE's demonstrations and the shipped CAD's recall gate in place of the run's probe gate."""
    shipped = FittedBundle.load(shipped_root("spare"))
    directions = {t: dataclasses.replace(f, demos=(DEMO,)) for t, f in shipped.directions.items()}
    X, y = np.random.default_rng(0).normal(size=(32, 640)).astype(np.float32), np.tile([0, 1], 16)
    probe_gate = ProbeGate(LinearProbe(site="resid.10", model_hash=shipped.model_hash, epochs=2).fit(X, y), 10)
    run_bundle = FittedBundle("spare+gate", directions, (DEMO,), shipped.model_hash, probe_gate)
    folder = run_bundle.save(tmp_path / "fitted" / "spare+gate")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "ship_run_bundle.py"), str(folder), "--gate-from", "cad",
                    "--out", str(tmp_path / "out")], check=True, capture_output=True,
                   env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    copy = FittedBundle.load(tmp_path / "out" / "spare", shipped.model_hash)
    assert copy.label == "spare" and copy.demos == shipped.demos and DEMO not in copy.demos
    assert isinstance(copy.gate, RecallGate) and not (tmp_path / "out" / "spare" / "gate").exists()
    assert {t: (f.strength, f.demos) for t, f in copy.directions.items()} == \
        {t: (f.strength, shipped.demos) for t, f in shipped.directions.items()}


def test_damaged_settings_are_one_error_line(tmp_path, bundle):
    folder = bundle.save(tmp_path / "actadd")
    config = json.loads((folder / "config.json").read_text())
    config["params"]["demos"] = "not a list"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SparekitError, match="'demos' must be a list of strings"):
        FittedBundle.load(folder)
    shutil.rmtree(folder)
    with pytest.raises(SparekitError, match="no fitted method in .*missing config.json"):
        FittedBundle.load(folder)


def test_the_measured_table_adds_the_recall_gate_beside_a_probe_gate(lm, bundle):
    """`sparekit demo`'s table (and benchmarks/bundle_table.py) on a probe-gated bundle: a `+gate` row, a `+recall`
    row beside it, and where each fires; a recall-gated bundle gets its `+gate` row only."""
    from sparekit.data.formats import PromptBuilder, prompt_format
    from sparekit.steering.demo import held_out_items, measured_table

    items, builder = held_out_items()[:4], PromptBuilder(prompt_format("three_shot"))
    table = measured_table(lm, bundle, builder, items)
    assert set(table["em"]) == {"unsteered", "actadd", "actadd+gate", "actadd+recall"} and table["n"] == 4
    assert table["gates"]["+recall"]["gate"] == "the recall gate, fits nothing"
    assert table["gates"]["+gate"]["gate"] == "the conflict probe at block 2, fitted without these items"
    recall_gated = dataclasses.replace(bundle, gate=RecallGate())
    assert set(measured_table(lm, recall_gated, builder, items)["gates"]) == {"+gate"}
