"""``sparekit demo``: the main job on the embedded default, end to end, in about a minute
(:class:`~sparekit.commands.demo.DemoCommand`); this module prints its steps and its result."""

from __future__ import annotations

import click

from sparekit.cli.common import emit, json_option, no_verify_option
from sparekit.cli.config import config_options
from sparekit.commands.demo import DemoCommand


def step(text: str) -> None:
    """Say which step of the demo starts (stderr: the result on stdout stays clean, --json too)."""
    click.echo(f"demo {text}…", err=True)


def render_table(t: dict) -> list[str]:
    """The measured table as text lines."""
    n = t["n"]
    lines = [f"measured now on {n} held-out conflicts (EM toward the target, count of {n}):",
             "  method            → memory   → context"]
    for label, row in t["em"].items():
        lines.append(f"  {label:<16}  {row['memory']:>2}/{n}      {row['context']:>2}/{n}")
    for suffix, gate in t["gates"].items():
        lines.append(f"  {suffix}: {gate['gate']}: fired on {gate['fired']['sub']}/{n} conflicts, "
                     f"{gate['fired']['org']}/{n} true contexts")
    return lines


def render_demo(r: dict) -> str:
    """The demo's result as text."""
    det = r["detection"]
    lines = [
        f"model: {r['model']}",
        f"shipped probes: {det['org']['probe_dir'] or 'not read'}",
        f"shipped steering: {r['steering']['memory']['fitted']}",
        f"question: {r['question']}",
        f"  closed-book:                          {r['closed_book']}",
        f"  with the true context  ({r['org_context']}): {r['with_org_context']}",
        f"  with a conflicting one ({r['sub_context']}): {r['with_sub_context']}  [{r['conflict_behaviour']}]",
        "detect (before generating):",
        f"  true context:        conflict probability {det['org']['conflict_probability']:.2f} "
        f"({det['org'].get('detector', 'probe')})",
        f"  conflicting context: conflict probability {det['sub']['conflict_probability']:.2f}, "
        f"predicted source: {det['sub'].get('predicted_source') or 'not read'}",
        "steer the conflicting case:",
    ]
    for toward, s in r["steering"].items():
        lines.append(f"  → {toward:<7} ({s['method']}, strength {s['strength']}): {s['steered']}   "
                     f"(unsteered: {s['unsteered']})")
    if "table" in r:
        lines += render_table(r["table"])
    return "\n".join(lines)


@click.command()
@config_options(DemoCommand)
@no_verify_option
@json_option
def demo(config: DemoCommand, as_json: bool) -> None:
    """Detect and steer a knowledge conflict on the default model (offline)."""
    emit(config.run(on_step=step), as_json, render_demo)
