"""``sparekit ls``: what a model offers to hook, and what the package ships for it."""

from __future__ import annotations

from pathlib import Path

import click

from sparekit.cli.common import device_option, emit, json_option, model_option


def describe_model(lm) -> dict:
    """The model's blocks, every hookable site (HF module path and aliases) and its shipped assets."""
    from sparekit.hooks import site_table
    from sparekit.models.assets import assets_for

    assets = assets_for(lm.info)
    return {"model": lm.info.to_dict(), "blocks": [lm.info.block_path(layer) for layer in range(lm.info.n_layers)],
            "sites": site_table(lm.info), "assets": None if assets is None else assets.describe()}


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
    lines.append(f"  conflict gate:   {assets['gate'] or 'none'}")
    lines += [f"  {'steering ' + label + ':':<17}{path}" for label, path in assets["steering"].items()]
    saes = assets["saes"]
    where = f" in {Path(next(iter(saes.values()))).parent}" if saes else ""
    lines.append(f"  SAEs (resid):    layers {', '.join(map(str, saes)) or 'none'}{where}")
    return "\n".join(lines)


@click.command("ls")
@model_option
@device_option
@json_option
def ls(model, device, as_json) -> None:
    """A model's blocks and hookable sites (HF module paths and the aliases sparekit reads), and the assets
    shipped for its weights."""
    from sparekit.models import load_model

    emit(describe_model(load_model(model, device=device or "cpu")), as_json, render)
