"""Options and output helpers shared by every sub-command (the rest of each command's options come from its
config dataclass, :mod:`sparekit.cli.config`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import click

from sparekit.utils.config import parse_list  # noqa: F401 (the one reading of a comma-separated option)


def _skip_verification(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:  # load_model reads it: the CLI has no other path to every load
        os.environ["SPAREKIT_NO_VERIFY"] = "1"


no_verify_option = click.option(
    "--no-verify", is_flag=True, expose_value=False, callback=_skip_verification,
    help="Load a short-name model even if its logits differ from the tested stack's.",
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")


def emit(result: dict, as_json: bool, render: Callable[[dict], str]) -> None:
    """Print ``result`` as JSON, or as the human-readable text ``render`` makes of it."""
    click.echo(json.dumps(result, indent=2, default=str) if as_json else render(result))
