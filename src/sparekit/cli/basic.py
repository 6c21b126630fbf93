"""``sparekit info`` and ``sparekit generate``."""

from __future__ import annotations

import click

from sparekit.cli.common import emit, json_option, no_verify_option
from sparekit.cli.config import config_options
from sparekit.commands.generate import GenerateCommand


def _render_versions(r: dict) -> list[str]:
    return [f"python {r['python']} on {r['platform']}", *(f"  {k}: {v}" for k, v in r["packages"].items()),
            f"cache: {r['cache_dir']}"]


def _render_runtime(r: dict) -> list[str]:
    return [f"device: {r['device']} ({r['threads']} threads)", f"tested transformers range: {r['supported_transformers']}",
            f"architectures: {', '.join(r['architectures'])}"]


def _render_fingerprint(fp: dict | None) -> list[str]:
    if fp is None:
        return ["fingerprint: not checked (--no-verify)"]
    if fp["ok"] is None:
        return [f"fingerprint: no reference for {fp['model']!r} (only short-name models have one)"]
    verdict = "ok" if fp["ok"] else "MISMATCH: this stack computes different logits; see the README's tested range"
    return [(f"fingerprint of {fp['model']}: {verdict} (max |Δ log p| {fp['max_abs_diff']:.2g}, "
             f"tolerance {fp['tolerance']})")]


@click.command()
@click.option("--model", "-m", default="default", show_default=True,
              help="Short-name model whose fingerprint to check ('default' or 'smollm2-135m').")
@click.option("--no-verify", is_flag=True, help="Skip loading the model to check its fingerprint.")
@json_option
def info(model: str, no_verify: bool, as_json: bool) -> None:
    """Versions, device, cache locations, and whether the model computes the tested logits.

    Text comes as it is known: versions at once (before torch is imported), then the device, then
    the fingerprint check, which loads the model.
    """
    from sparekit.utils.env import versions_info
    from sparekit.utils.io import cache_dir

    def say(lines: list[str]) -> None:
        if not as_json:  # JSON is one object, at the end
            click.echo("\n".join(lines))

    result: dict = {**versions_info(), "cache_dir": str(cache_dir())}
    say(_render_versions(result))
    # deliberately here, after the first lines: these pull in torch and transformers (seconds)
    from sparekit.models.architecture import SUPPORTED_ARCHITECTURES
    from sparekit.models.loading import SUPPORTED_TRANSFORMERS, check_fingerprint, default_device, load_model
    from sparekit.utils.env import environment_info

    result.update(environment_info(), device=default_device(), supported_transformers=SUPPORTED_TRANSFORMERS,
                  architectures=list(SUPPORTED_ARCHITECTURES), fingerprint=None)
    say(_render_runtime(result))
    if not no_verify:
        check = check_fingerprint(load_model(model, verify=False))
        result["fingerprint"] = {"model": model, **check.as_dict()} if check else {"model": model, "ok": None}
    say(_render_fingerprint(result["fingerprint"]))
    if as_json:
        emit(result, as_json=True, render=str)
    if result["fingerprint"] and result["fingerprint"]["ok"] is False:
        raise SystemExit(2)


@click.command()
@config_options(GenerateCommand)
@no_verify_option
@json_option
def generate(config: GenerateCommand, as_json: bool) -> None:
    """Greedy-generate a continuation of PROMPT (no sampling, reproducible)."""
    emit(config.run(), as_json, lambda r: r["completion"])
