"""``sparekit info`` and ``sparekit generate``."""

from __future__ import annotations

import click

from sparekit.cli.common import device_map_option, device_option, dtype_option, emit, json_option, model_option


@click.command()
@click.option("--model", "-m", default="default", show_default=True,
              help="Short-name model whose fingerprint to check ('default' or 'smollm2-135m').")
@click.option("--no-verify", is_flag=True, help="Skip loading the model to check its fingerprint.")
@json_option
def info(model: str, no_verify: bool, as_json: bool) -> None:
    """Versions, device, cache locations, and whether the model computes the tested logits."""
    from sparekit.models.architecture import SUPPORTED_ARCHITECTURES
    from sparekit.models.loading import SUPPORTED_TRANSFORMERS, check_fingerprint, default_device, load_model
    from sparekit.utils.env import environment_info
    from sparekit.utils.io import cache_dir

    result = {
        **environment_info(),
        "device": default_device(),
        "cache_dir": str(cache_dir()),
        "supported_transformers": SUPPORTED_TRANSFORMERS,
        "architectures": list(SUPPORTED_ARCHITECTURES),
        "fingerprint": None,
    }
    if not no_verify:
        lm = load_model(model, verify=False)
        check = check_fingerprint(lm)
        result["fingerprint"] = {"model": model, **check.as_dict()} if check else {"model": model, "ok": None}

    def render(r: dict) -> str:
        lines = [f"python {r['python']} on {r['platform']}", f"device: {r['device']} ({r['threads']} threads)"]
        lines += [f"  {k}: {v}" for k, v in r["packages"].items()]
        lines.append(f"tested transformers range: {r['supported_transformers']}")
        lines.append(f"cache: {r['cache_dir']}")
        fp = r["fingerprint"]
        if fp is None:
            lines.append("fingerprint: not checked (--no-verify)")
        elif fp["ok"] is None:
            lines.append(f"fingerprint: no reference for {fp['model']!r} (only short-name models have one)")
        else:
            verdict = "ok" if fp["ok"] else "MISMATCH: this stack computes different logits; see the README's tested range"
            lines.append(f"fingerprint of {fp['model']}: {verdict} (max |Δ log p| {fp['max_abs_diff']:.2g}, "
                         f"tolerance {fp['tolerance']})")
        lines.append(f"architectures: {', '.join(r['architectures'])}")
        return "\n".join(lines)

    emit(result, as_json, render)
    if result["fingerprint"] and result["fingerprint"]["ok"] is False:
        raise SystemExit(2)


@click.command()
@click.argument("prompt")
@model_option
@click.option("--max-new-tokens", "-n", default=12, show_default=True, type=click.IntRange(1, 4096))
@device_option
@device_map_option
@dtype_option
@json_option
def generate(prompt: str, model: str, max_new_tokens: int, device: str | None, device_map: str | None, dtype: str,
             as_json: bool) -> None:
    """Greedy-generate a continuation of PROMPT (no sampling, reproducible)."""
    from sparekit.models import load_model
    from sparekit.evaluation.generation import greedy_generate

    lm = load_model(model, dtype=dtype, device=device, device_map=device_map)
    completion = greedy_generate(lm, [prompt], max_new_tokens=max_new_tokens, stop_at_newline=False)[0]
    emit({"model": lm.info.name, "prompt": prompt, "completion": completion}, as_json,
         lambda r: r["completion"])
