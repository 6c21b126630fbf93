"""The model fingerprint: a stack that computes other logits is one clear error, never silence."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path

import pytest
import torch

from sparekit.cli.main import main
from sparekit.errors import SparekitError
from sparekit.models import fingerprint, loading
from sparekit.models.tiny import tiny_model

ROOT = Path(__file__).resolve().parents[1]


def test_declared_transformers_range_is_the_one_the_package_names():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = next(d for d in deps if re.match(r"transformers\b", d))
    assert declared == f"transformers{loading.SUPPORTED_TRANSFORMERS}"


def test_reference_round_trip_and_a_perturbed_weight_on_a_tiny_model(tmp_path):
    lm = tiny_model("llama")
    reference = fingerprint.compute_reference(lm.model, lm.tokenizer, "tiny")
    fingerprint.save_reference(reference, tmp_path / "ref.json")
    loaded = fingerprint.load_reference(tmp_path / "ref.json")
    assert fingerprint.verify(lm.model, lm.tokenizer, loaded).max_abs_diff == 0.0
    broken = copy.deepcopy(lm.model)
    with torch.no_grad():
        broken.model.norm.weight.mul_(4.0)
    check = fingerprint.verify(broken, lm.tokenizer, loaded)
    assert not check.ok and check.max_abs_diff > check.tolerance


def _valid_reference() -> dict:
    return {"format_version": 1, "model": "x", "prompts": ["a", "b"], "top_ids": [[1, 2], [3, 4]],
            "top_log_probs": [[-0.1, -2.0], [-0.5, -1.0]]}


@pytest.mark.parametrize("corrupt", [
    lambda r: r.pop("top_ids"),
    lambda r: r.update(format_version=99),
    lambda r: r.update(prompts=[]),
    lambda r: r.update(top_ids=[[1, 2]]),
    lambda r: r.update(top_log_probs=[[-0.1, 3.0], [-0.5, -1.0]]),
    lambda r: r.update(top_ids=[["a", 2], [3, 4]]),
    lambda r: r.update(top_log_probs="nope"),
])
def test_malformed_reference_is_a_clear_error(tmp_path, corrupt):
    reference = _valid_reference()
    corrupt(reference)
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(reference))
    with pytest.raises(SparekitError, match="malformed model fingerprint reference"):
        fingerprint.load_reference(path)


def test_missing_or_unparsable_reference_is_a_clear_error(tmp_path):
    with pytest.raises(SparekitError, match="fingerprint reference missing"):
        fingerprint.load_reference(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SparekitError, match="not valid JSON"):
        fingerprint.load_reference(tmp_path / "bad.json")
    fingerprint.load_reference(_write(tmp_path / "ok.json", _valid_reference()))


def _write(path: Path, obj: dict) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.slow
def test_default_model_matches_its_shipped_reference(default_lm):
    check = loading.check_fingerprint(default_lm)
    assert check is not None and check.ok, check
    assert check.max_abs_diff < 0.01  # same pinned CPU stack as the reference


@pytest.mark.slow
def test_a_stack_with_other_logits_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    """Simulates a transformers release that loads the model but computes other logits."""
    original = loading.AutoModelForCausalLM.from_pretrained

    def perturbed(*args, **kwargs):
        model = original(*args, **kwargs)
        with torch.no_grad():
            model.model.norm.weight.add_(1.0)
        return model

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", perturbed)
    monkeypatch.setenv("SPAREKIT_NO_VERIFY", "0")  # restored after --no-verify sets it below
    assert main(["generate", "The capital of France is", "-n", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "computes different logits" in err and "transformers" in err and "--no-verify" in err
    assert main(["generate", "The capital of France is", "-n", "1", "--device", "cpu", "--no-verify"]) == 0


@pytest.mark.slow
def test_a_missing_reference_is_not_a_skipped_check(monkeypatch, tmp_path):
    monkeypatch.setattr(fingerprint, "reference_path", lambda name: tmp_path / f"{name}.json")
    monkeypatch.delenv("SPAREKIT_NO_VERIFY", raising=False)
    with pytest.raises(SparekitError, match="fingerprint reference missing"):
        loading.load_model("default", device="cpu")
