"""Options and output helpers shared by every sub-command."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import click

from sparekit.data.formats import DEFAULT_FORMAT, FORMATS
from sparekit.utils.config import DEVICE_HELP, DEVICE_MAP_HELP, DEVICE_MAPS, DTYPE_HELP, MODEL_HELP, finite_number
from sparekit.utils.config import parse_list  # noqa: F401 (the one reading of a comma-separated option)


def _skip_verification(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:  # load_model reads it: the CLI has no other path to every load
        os.environ["SPAREKIT_NO_VERIFY"] = "1"


no_verify_option = click.option(
    "--no-verify", is_flag=True, expose_value=False, callback=_skip_verification,
    help="Load a short-name model even if its logits differ from the tested stack's.",
)


def model_option(command: Callable) -> Callable:
    """``-m/--model`` plus ``--no-verify`` (skip the fingerprint check of a short-name model)."""
    return click.option(
        "--model", "-m", default="default", show_default=True, help=MODEL_HELP,
    )(no_verify_option(command))


def finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Click callback: refuse ``nan`` and ``inf``, which click's float type accepts."""
    return None if value is None else finite_number(value, f"--{param.name.replace('_', '-')}")


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
device_option = click.option("--device", default=None, help=DEVICE_HELP)
device_map_option = click.option("--device-map", default=None, type=click.Choice(DEVICE_MAPS), help=DEVICE_MAP_HELP)
prompt_format_option = click.option(
    "--prompt-format", default=DEFAULT_FORMAT, show_default=True, type=click.Choice(list(FORMATS)),
    help="How the context and question become the prompt (three_shot: the format the shipped probes and "
         "steering were fitted on; chat: the model's chat template).")
dtype_option = click.option("--dtype", default="float32", show_default=True, help=DTYPE_HELP)


def emit(result: dict, as_json: bool, render: Callable[[dict], str]) -> None:
    """Print ``result`` as JSON, or as the human-readable text ``render`` makes of it."""
    click.echo(json.dumps(result, indent=2, default=str) if as_json else render(result))
