"""llama.cpp control vectors: export fitted methods to GGUF, import them back as ``cvec``."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

import sparekit
from sparekit.cli.main import main
from sparekit.data.dataset import ConflictDataset, ConflictExample
from sparekit.errors import SparekitError
from sparekit.sae import ReluSAE, save_sae
from sparekit.steering import DIRECTIONS, BehaviourData, FittedBundle, FittedSteering, SteeringPrompt, make_method
from sparekit.steering.control_vector import export_control_vector, read_control_vector

NAMES = ["Ann", "Bob", "Cy", "Dee", "Eve", "Fay", "Gus", "Hal"]


@pytest.fixture(scope="module")
def behaviour() -> BehaviourData:
    """Eight prompts with alternating labels; hidden states random but well separated by label."""
    examples = [ConflictExample(id=f"q{i}", question=f"who built hut {i}?", org_context=f"Hut {i} was built by {a}.",
                                org_answer=(a,), sub_context=f"Hut {i} was built by {b}.", sub_answer=(b,))
                for i, (a, b) in enumerate(zip(NAMES, NAMES[3:] + NAMES[:3]))]
    labels = (np.arange(8) % 2 == 0).astype(np.int64)
    gen = torch.Generator().manual_seed(0)
    offset = torch.randn(64, generator=gen)
    hidden = {layer: torch.randn(8, 64, generator=gen) + 3 * torch.as_tensor(labels)[:, None] * offset
              for layer in (0, 1, 2)}
    pool = ConflictDataset(examples, "toy")
    return BehaviourData([SteeringPrompt(ex, "sub", ()) for ex in examples], labels, hidden, pool)


@pytest.fixture(scope="module")
def sae_source(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("saes")
    torch.manual_seed(0)
    for layer in (1, 2):
        sae = ReluSAE(64, 128, hook_layer=layer)
        with torch.no_grad():
            sae.W_enc.normal_(0, 0.2), sae.W_dec.normal_(0, 0.2)
        save_sae(sae, folder / f"resid.{layer}")
    return str(folder / "resid.{layer}")


def test_exported_gguf_reads_back_with_the_gguf_package(behaviour, sae_source, tmp_path):
    methods = {"actadd": make_method("actadd", layer=2), "knob": make_method("knob", layer=1),
               "spare": make_method("spare", layers=(1, 2), sae=sae_source, mi_mass=0.5),
               "cvec": make_method("cvec", layers=(1, 2))}
    for kind, method in methods.items():
        method.fit(behaviour)
        expected = method.control_vector("memory", 2.0)
        export_control_vector(method, tmp_path / f"{kind}.gguf", "memory", 2.0, model_hint="llama")
        reader = gguf.GGUFReader(str(tmp_path / f"{kind}.gguf"))
        fields = {key: field.contents() for key, field in reader.fields.items()}
        assert fields["general.architecture"] == "controlvector"
        assert fields["controlvector.model_hint"] == "llama"
        assert fields["controlvector.layer_count"] == len(expected.vectors)
        assert fields["sparekit.exact"] is (kind in ("actadd", "cvec"))
        assert {t.name for t in reader.tensors} == {f"direction.{layer}" for layer in expected.vectors}
        for tensor in reader.tensors:
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
            layer = int(tensor.name.split(".")[1])
            assert np.array_equal(np.asarray(tensor.data), expected.vectors[layer].numpy())
            assert expected.vectors[layer].abs().sum() > 0


def test_round_trip_gives_identical_generations(tiny_llama, behaviour, tmp_path):
    actadd = make_method("actadd", layer=2).fit(behaviour)
    export_control_vector(actadd, tmp_path / "a.gguf", "context", 6.0)
    imported = sparekit.load(tmp_path / "a.gguf")
    assert imported.kind == "cvec" and imported.layers == (2,)
    prompts = behaviour.prompts[:4]
    with make_method("none").fit(behaviour).steer(tiny_llama, "memory") as plain:
        unsteered = plain.generate(prompts, max_new_tokens=4)
    for toward in DIRECTIONS:
        with actadd.steer(tiny_llama, toward, strength=6.0) as steered:
            original = steered.generate(prompts, max_new_tokens=4)
        with imported.steer(tiny_llama, toward, strength=1.0) as steered:
            assert steered.generate(prompts, max_new_tokens=4) == original
        assert original != unsteered  # the vector does move this model, so equality means something
    # saved and reloaded as a sparekit method, it re-exports the same file contents
    imported.save(tmp_path / "saved")
    export_control_vector(sparekit.load(tmp_path / "saved"), tmp_path / "b.gguf", "memory", 1.0)
    first, second = read_control_vector(tmp_path / "a.gguf")[0], read_control_vector(tmp_path / "b.gguf")[0]
    assert torch.equal(second[2], -first[2])


def test_knob_vector_moves_the_other_groups_mean_to_the_target(behaviour):
    knob = make_method("knob", layer=1).fit(behaviour)
    u = knob.direction_
    for toward, source_label in (("context", 0), ("memory", 1)):
        vector = knob.control_vector(toward, 1.0).vectors[1]
        source_mean = behaviour.hidden[1][behaviour.labels == source_label].mean(0)
        assert float((source_mean + vector) @ u) == pytest.approx(knob.target(toward, 1.0), rel=1e-4)


@pytest.mark.parametrize("kind", ["none", "cad", "dola", "sea"])
def test_a_method_without_a_fixed_vector_is_refused(kind, behaviour, tmp_path):
    params = {"dola": {"premature_layers": (0, 1)}, "sea": {"layer": 1}}.get(kind, {})
    method = make_method(kind, **params).fit(behaviour)
    with pytest.raises(SparekitError, match="no fixed vector"):
        export_control_vector(method, tmp_path / "x.gguf", "memory", 1.0)
    assert not (tmp_path / "x.gguf").exists()


def test_layer_zero_cannot_be_expressed(behaviour, tmp_path):
    method = make_method("actadd", layer=0).fit(behaviour)
    with pytest.raises(SparekitError, match="layer 0"):
        export_control_vector(method, tmp_path / "x.gguf", "memory", 1.0)
    assert not list(tmp_path.iterdir())  # no half-written file


def _write(path, arch: str, tensors: dict[str, np.ndarray]) -> None:
    writer = gguf.GGUFWriter(str(path), arch)
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_foreign_control_vectors_load_and_bad_ones_are_refused(tiny_llama, tmp_path):
    v = np.arange(64, dtype=np.float32)
    _write(tmp_path / "repeng.gguf", "controlvector", {"direction.1": v, "direction.3": 2 * v})
    method = sparekit.load(tmp_path / "repeng.gguf")
    assert method.layers == (1, 3) and method.toward_ == "context"  # no sparekit.toward: taken as toward context
    assert torch.equal(method.control_vector("memory", 0.5).vectors[3], torch.from_numpy(-v))
    _write(tmp_path / "wide.gguf", "controlvector", {"direction.1": np.zeros(128, dtype=np.float32)})
    wide = sparekit.load(tmp_path / "wide.gguf")
    with pytest.raises(SparekitError, match="do not fit"), wide.steer(tiny_llama, "memory"):
        pass
    cases = {"zero": ("controlvector", {"direction.0": v}, "direction.N with N >= 1"),
             "name": ("controlvector", {"dir.1": v}, "direction.N"),
             "arch": ("llama", {"direction.1": v}, "not a control vector"),
             "sizes": ("controlvector", {"direction.1": v, "direction.2": v[:8]}, "differ in size"),
             "empty": ("controlvector", {}, "no direction tensors")}
    for name, (arch, tensors, message) in cases.items():
        _write(tmp_path / f"{name}.gguf", arch, tensors)
        with pytest.raises(SparekitError, match=message):
            sparekit.load(tmp_path / f"{name}.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    with pytest.raises(SparekitError, match="not a readable GGUF"):
        sparekit.load(tmp_path / "junk.gguf")


def test_cli_export_uses_the_tuned_direction_and_strength(behaviour, tmp_path, capsys):
    method = make_method("actadd", layer=2).fit(behaviour)
    root = FittedBundle("actadd", {"memory": FittedSteering(method, 3.0, ())}).save(tmp_path / "fitted" / "actadd")
    assert main(["export", "control-vector", str(root), "--toward", "memory", "--out",
                 str(tmp_path / "a.gguf"), "--json"]) == 0
    vectors, meta = read_control_vector(tmp_path / "a.gguf")
    assert meta["sparekit.strength"] == 3.0 and meta["sparekit.toward"] == "memory"
    torch.testing.assert_close(vectors[2], -3.0 * method.vector_)
    # a bundle's direction folder exports its own direction at its tuned strength
    assert main(["export", "control-vector", str(root / "memory"), "--out", str(tmp_path / "d.gguf")]) == 0
    assert read_control_vector(tmp_path / "d.gguf")[1]["sparekit.strength"] == 3.0
    make_method("cad").fit(behaviour).save(tmp_path / "cad")
    assert main(["export", "control-vector", str(tmp_path / "cad"), "--out", str(tmp_path / "c.gguf")]) == 2
    assert "no fixed vector" in capsys.readouterr().err


def test_cli_export_of_a_fitted_root_without_toward_takes_context_and_names_memory(behaviour, tmp_path, capsys):
    directions = {toward: FittedSteering(make_method("actadd", layer=2).fit(behaviour), strength, ())
                  for toward, strength in (("context", 2.0), ("memory", 3.0))}
    root = FittedBundle("actadd", directions).save(tmp_path / "fitted" / "actadd")  # type: ignore[arg-type]
    assert main(["export", "control-vector", str(root), "--out", str(tmp_path / "a.gguf"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["toward"] == "context" and result["strength"] == 2.0 and result["other_directions"] == ["memory"]
    assert read_control_vector(tmp_path / "a.gguf")[1]["sparekit.toward"] == "context"
    assert main(["export", "control-vector", str(root), "--out", str(tmp_path / "m.gguf")]) == 0
    out = capsys.readouterr().out
    assert "spare" not in out and "toward context" in out and "--toward memory" in out
    assert main(["export", "control-vector", str(tmp_path), "--out", str(tmp_path / "x.gguf")]) == 2
    assert "no saved method" in capsys.readouterr().err
