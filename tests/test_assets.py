"""Shipped assets found through one registry keyed by the model's weights; no hidden globals."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sparekit.errors import SparekitError
from sparekit.hooks import Site
from sparekit.models.assets import assets_for, default_assets
from sparekit.models.tiny import tiny_model

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_the_registry_finds_the_default_models_assets_and_nothing_for_others():
    assets = default_assets()
    assert assets_for("default") == assets_for("gemma3-270m") == assets
    assert (assets.probes / "detect.json").is_file() and (assets.steering("spare") / "config.json").is_file()
    assert "spare" in assets.steering_labels() and sorted(assets.saes()) == list(range(5, 13))
    assert assets.gates() == dict.fromkeys(("adacad", "cad", "spare", "spare+cad"), "recall")  # every one: recall
    described = assets.describe()
    assert described["model_hash"] == assets.model_hash
    assert set(described["steering"]) == {"adacad", "cad", "spare", "spare+cad"}
    lm = tiny_model("llama")
    assert assets_for(lm.info) is None and assets_for("smollm2-135m") is None and assets_for("no-such") is None


def test_a_server_takes_only_the_shipped_bundles_it_can_mix_in_a_batch():
    """CAD and AdaCAD act on the logits of the whole batch, so `serve` (and the vLLM plugin) skip their shipped
    bundles; `steer` takes every one."""
    from sparekit.serve.engine import SERVABLE_KINDS

    assets = default_assets()
    assert assets.steering_kinds("cad") == {"cad"} and assets.steering_kinds("spare") == {"spare"}
    assert assets.steering_kinds("spare+cad") == {"combined"}  # SpARE's edit with CAD's contrast: for `steer`
    assert assets.steering_labels() == ["adacad", "cad", "spare", "spare+cad"]
    assert assets.steering_labels(SERVABLE_KINDS) == ["spare"] and "cad" not in SERVABLE_KINDS


def test_shipped_readers_refuse_a_model_without_assets():
    from sparekit.probes.detect import resolve_probe_dir
    from sparekit.sae import shipped_layers
    from sparekit.sae.formats import default_sae_path
    from sparekit.steering.fitted import shipped_root

    info = tiny_model("llama").info
    with pytest.raises(SparekitError, match="no shipped spare for tiny-llama"):
        shipped_root("spare", info)
    with pytest.raises(SparekitError, match="no probes shipped for tiny-llama"):
        resolve_probe_dir(None, info)
    shipped = r"\(shipped: adacad, cad, spare, spare\+cad\)"
    with pytest.raises(SparekitError, match=rf"no shipped sparee for default {shipped}"):
        shipped_root("sparee")
    assert shipped_layers(info) == [] and shipped_layers() == list(range(5, 13))
    with pytest.raises(SparekitError, match="shipped layers: 5, 6"):
        default_sae_path(2)
    assert resolve_probe_dir(None) == default_assets().probes


def test_importing_sparekit_leaves_the_umask_alone_and_artefacts_follow_it(tmp_path):
    """The umask is process state: reading it (os.umask sets it) races with other threads."""
    code = ("import os, sys; os.umask(0o027); calls = []; real = os.umask; "
            "os.umask = lambda mask: calls.append(mask) or real(mask); "
            "import sparekit, sparekit.cli.main, sparekit.steering, sparekit.sae, sparekit.utils.io as io; "
            "io.atomic_write_text(sys.argv[1], 'x'); print(calls, oct(real(0o027)))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.txt")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC}, check=True)
    assert proc.stdout.strip() == "[] 0o27"
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left behind


def test_ls_on_a_tiny_model_lists_sites_and_says_no_assets(tmp_path, capsys):
    import json

    from sparekit.cli.main import main

    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    assert main(["ls", "-m", str(tmp_path / "m"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    n = lm.info.n_layers
    assert result["assets"] is None and result["blocks"] == [f"model.layers.{i}" for i in range(n)]
    assert len(result["sites"]) == 4 * n and result["sites"][:4] == [
        {"site": "heads.0", "module": "model.layers.0.self_attn.o_proj", "aliases": []},  # the heads' input to o_proj
        {"site": "attn.0", "module": "model.layers.0.self_attn", "aliases": ["blocks.0.hook_attn_out"]},
        {"site": "mlp.0", "module": "model.layers.0.mlp", "aliases": ["blocks.0.hook_mlp_out"]},
        {"site": "resid.0", "module": "model.layers.0", "aliases": ["0", "blocks.0.hook_resid_post"]}]
    for row in result["sites"]:  # every alias names the same site, every module exists
        assert all(str(Site.parse(alias)) == row["site"] for alias in row["aliases"])
        lm.model.get_submodule(row["module"])
    assert main(["ls", "-m", str(tmp_path / "m")]) == 0
    assert "shipped assets: none for these weights" in capsys.readouterr().out


@pytest.mark.slow
def test_ls_on_the_default_model_shows_its_shipped_assets(capsys):
    from sparekit.cli.main import main

    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "model.layers.17.self_attn" in out and "blocks.17.hook_resid_post" in out
    assert "probes (detect):" in out and "steering spare:" in out and "layers 5, 6, 7, 8, 9, 10, 11, 12" in out


@pytest.mark.parametrize(("call", "expected"), [
    (lambda: Site.parse("resdi.6"), "unknown component 'resdi' (did you mean 'resid'?"),
    (lambda: Site.parse("blocks.6.hook_mlp_outt"), "did you mean 'blocks.6.hook_mlp_out'"),
    (lambda: __import__("sparekit.steering", fromlist=["x"]).make_method("acttad"), "did you mean 'actadd'"),
    (lambda: __import__("sparekit.data", fromlist=["x"]).load_dataset("nqswp"), "did you mean 'nqswap'"),
    (lambda: __import__("sparekit.models", fromlist=["x"]).load_model("defualt"), "did you mean 'default'"),
    (lambda: __import__("sparekit.steering.fitted", fromlist=["x"]).shipped_root("spar"), "did you mean 'spare'"),
])
def test_unknown_names_suggest_the_closest_valid_ones(call, expected):
    with pytest.raises(SparekitError) as err:
        call()
    assert expected in str(err.value) and "\n" not in str(err.value)
