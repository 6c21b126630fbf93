"""``sparekit steer``: one question, unsteered and steered, with the conflict probe's reading."""

from __future__ import annotations

import click

from sparekit.cli.common import emit, json_option, no_verify_option
from sparekit.cli.config import config_options
from sparekit.commands.steer import SteerCommand


def render(r: dict) -> str:
    """Both answers and the reading, one line each."""
    d = r["detection"]
    name = f"{r['gate']} gate" if r.get("gate") not in (None, "probe") else "gate"
    gate = {None: "", True: f"   [{name} fired]", False: f"   [{name} did not fire: left unsteered]"}[r["gate_fired"]]
    reading = ("no probes for this model: pass --probe <run> or --detector recall" if d is None else
               f"conflict probability: {d['conflict_probability']:.2f} ({d.get('detector', 'probe')})   "
               f"predicted source: {d.get('predicted_source') or 'not read'}")
    return "\n".join([
        f"method: {r['fitted']}   probes: {(d or {}).get('probe_dir') or 'none'}",
        reading,
        f"unsteered:              {r['unsteered']}",
        f"steered → {r['toward']:<8} ({r['method']}, strength {r['strength']}): {r['steered']}{gate}",
    ])


@click.command()
@config_options(SteerCommand)
@no_verify_option
@json_option
def steer(config: SteerCommand, as_json: bool) -> None:
    """Answer QUESTION given CONTEXT, unsteered and steered TOWARD memory or context.

    \b
    Example:
      sparekit steer "The capital of France is Lyon." "What is the capital of France?" --toward memory
    """
    emit(config.run(), as_json, render)
