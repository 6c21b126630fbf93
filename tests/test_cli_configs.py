"""Every command's options come from a config dataclass with ``run()`` (issue 26): the CLI only generates
options and prints, so ``Config(...).run()`` is the command, and gives what ``--json`` prints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import pytest

import sparekit.models
from sparekit.cli.main import COMMANDS, cli, main
from sparekit.commands.data import ShowDataCommand
from sparekit.commands.export import ExportCommand
from sparekit.commands.generate import GenerateCommand
from sparekit.commands.steer import SteerCommand
from sparekit.errors import SparekitError

#: commands without a config, and why
TRIVIAL = {"info": "prints versions, then the device, then the fingerprint as each becomes known; its two options "
                   "only pick the model to fingerprint and skip that step"}
#: the options every command may add to its config's: printing, the config file, and the model check's switch
SHARED = {"as_json", "config_file", "dry_run", "help"}
NO_VERIFY = "no_verify"  # not a value: it sets the environment load_model reads (cli.common.no_verify_option)

SHIPPED_SPARE = Path(sparekit.models.__file__).parents[1] / "assets" / "steering" / "gemma-3-270m" / "spare"


def _leaves(group: click.Group, ctx: click.Context, path: str = "") -> dict[str, click.Command]:
    """Every runnable sub-command under ``group``, by its path (``kv bench``)."""
    found = {}
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        full = f"{path} {name}".strip()
        found.update(_leaves(command, ctx, full) if isinstance(command, click.Group) else {full: command})
    return found


def test_every_command_takes_its_options_from_a_config():
    leaves = _leaves(cli, click.Context(cli))
    assert {path.split()[0] for path in leaves} == set(COMMANDS)
    for path, command in leaves.items():
        params = {p.name for p in command.params}
        config = getattr(command.callback, "__config__", None)
        if path in TRIVIAL:
            assert config is None, f"{path} has a config now: drop it from TRIVIAL"
            continue
        assert config is not None and callable(config.run), f"{path}: no config dataclass with run()"
        fields = {f.name for f in dataclasses.fields(config) if f.metadata.get("cli", True)}
        assert params - SHARED - {NO_VERIFY} == fields, path


def test_a_config_is_checked_when_built_before_any_model_loads():
    with pytest.raises(SparekitError, match="finite number"):
        SteerCommand(context="c", question="q", toward="memory", strength=float("nan"))
    with pytest.raises(SparekitError, match="--toward must be one of"):
        SteerCommand(context="c", question="q", toward="sideways")
    with pytest.raises(SparekitError, match="is not a folder"):
        ExportCommand(method_dir="/nonexistent", out="x.gguf")
    assert main(["steer", "c", "q", "--toward", "memory", "--strength", "nan"]) == 2


def _cli_json(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _as_printed(result: dict) -> dict:
    return json.loads(json.dumps(result, default=str))


def test_run_gives_what_the_cli_prints(capsys, tmp_path):
    shown = ShowDataCommand(limit=20, rows=2)
    assert _as_printed(shown.run()) == _cli_json(capsys, ["data", "show", "--limit", "20", "--rows", "2"])
    printed = _cli_json(capsys, ["export", "control-vector", str(SHIPPED_SPARE), "--toward", "memory", "--out",
                                 str(tmp_path / "cli.gguf")])
    library = ExportCommand(method_dir=str(SHIPPED_SPARE), toward="memory", out=str(tmp_path / "lib.gguf")).run()
    assert {**_as_printed(library), "out": None} == {**printed, "out": None}
    assert (tmp_path / "cli.gguf").read_bytes() == (tmp_path / "lib.gguf").read_bytes()


def test_generate_run_is_the_command(capsys, tmp_path, tiny_llama):
    folder = tmp_path / "model"
    tiny_llama.model.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    config = GenerateCommand(prompt="question: a\nanswer:", model=str(folder), max_new_tokens=4, device="cpu")
    printed = _cli_json(capsys, ["generate", config.prompt, "-m", str(folder), "-n", "4", "--device", "cpu"])
    assert _as_printed(config.run()) == printed and printed["completion"]


def test_dry_run_prints_the_config_a_library_call_would_take(capsys):
    capsys.readouterr()
    assert main(["steer", "ctx, with a comma", "q", "--toward", "context", "--gate", "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert SteerCommand(**printed) == SteerCommand(context="ctx, with a comma", question="q", toward="context",
                                                   gate=True)
    assert main(["detect", "--question", "q", "--context", "a, b", "--context", "a, b", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["contexts"] == ["a, b", "a, b"]  # a passage's commas are its own
