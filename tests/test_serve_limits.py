"""``sparekit serve``'s limits: one option per :class:`~sparekit.serve.Limits` field, built by name (no FastAPI needed)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import click
from click.testing import CliRunner

from sparekit.cli.config import config_options
from sparekit.cli.serve import serve
from sparekit.serve.limits import Limits


def test_every_limit_is_a_serve_option_with_its_default_and_help():
    params = {p.name: p for p in serve.params}
    for field in dataclasses.fields(Limits):
        option = params[field.name]
        assert option.default == field.default and option.help == field.metadata["help"], field.name
    assert params["drain_timeout_s"].opts == ["--drain-timeout"]  # the flag users know


def test_limits_are_built_by_name_whatever_the_field_order():
    """A dataclass with Limits' fields reversed gets each value under its own name (no positional build)."""
    reordered = dataclasses.make_dataclass(
        "Reordered", [(f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata))
                      for f in reversed(dataclasses.fields(Limits))], frozen=True)

    @click.command()
    @config_options(reordered)
    def show(config) -> None:
        click.echo(json.dumps(dataclasses.asdict(config)))

    args = ["--max-queue", "7", "--max-batch", "3", "--drain-timeout", "5", "--max-tokens", "9"]
    result = CliRunner().invoke(show, args)
    assert result.exit_code == 0, result.output
    values = json.loads(result.output)
    assert Limits(**values) == Limits(max_queue=7, max_batch=3, drain_timeout_s=5.0, max_tokens=9)
    assert CliRunner().invoke(show, ["--max-batch", "0"]).exit_code == 2  # bounds come from the field too


def test_the_server_gets_its_limits_by_name():
    """``ServeCommand`` carries Limits' fields as options and hands them to the app as a :class:`Limits`."""
    from sparekit.commands.serve import ServeCommand

    command = ServeCommand(max_batch=3, drain_timeout_s=5.0, port=9000)
    assert command.limits() == Limits(max_batch=3, drain_timeout_s=5.0)


def test_limits_need_no_fastapi():
    """``sparekit serve --help`` lists the limits without the ``serve`` extra imported."""
    code = "import sys, sparekit.cli.serve; assert 'fastapi' not in sys.modules and 'uvicorn' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
