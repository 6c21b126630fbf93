"""``sparekit ls``: what a model offers to hook, and what the package ships for it."""

from __future__ import annotations

from pathlib import Path

import click

from sparekit.cli.common import emit, json_option, no_verify_option
from sparekit.cli.config import config_options
from sparekit.commands.generate import LsCommand


def render(r: dict) -> str:
    info = r["model"]
    lines = [f"model: {info['name']} ({info['model_type']}, {info['n_layers']} blocks {r['blocks'][0]} … "
             f"{r['blocks'][-1]}, d_model {info['d_model']}, weights {info['model_hash'][:12]}…)",
             "layer L = the output of decoder block L", "", f"{'site':<10} {'HF module':<34} aliases"]
    lines += [f"{s['site']:<10} {s['module']:<34} {', '.join(s['aliases'])}" for s in r["sites"]]
    assets = r["assets"]
    lines.append("")
    if assets is None:
        lines.append("shipped assets: none for these weights (fit your own: `sparekit probe`, `sparekit bench steer`, "
                     "`sparekit sae train`)")
        return "\n".join(lines)
    lines.append(f"shipped assets ({assets['name']}):")
    lines.append(f"  probes (detect): {assets['probes'] or 'none'}")
    by_gate: dict[str, list[str]] = {}
    for label, gate in assets["gates"].items():
        by_gate.setdefault(gate, []).append(label)
    gates = "; ".join(f"{gate} ({', '.join(labels)})" for gate, labels in by_gate.items())
    lines.append(f"  conflict gates:  {gates or 'none'}")
    lines += [f"  {'steering ' + label + ':':<17}{path}" for label, path in assets["steering"].items()]
    saes = assets["saes"]
    where = f" in {Path(next(iter(saes.values()))).parent}" if saes else ""
    lines.append(f"  SAEs (resid):    layers {', '.join(map(str, saes)) or 'none'}{where}")
    return "\n".join(lines)


@click.command("ls")
@config_options(LsCommand)
@no_verify_option
@json_option
def ls(config: LsCommand, as_json: bool) -> None:
    """A model's blocks and hookable sites (HF module paths and the aliases sparekit reads), and the assets
    shipped for its weights."""
    emit(config.run(), as_json, render)
