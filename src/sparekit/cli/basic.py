"""``sparekit info`` and ``sparekit generate``."""

from __future__ import annotations

import click

from sparekit.cli.common import device_map_option, device_option, dtype_option, emit, json_option, model_option


@click.command()
@json_option
def info(as_json: bool) -> None:
    """Versions, device and where the default model is cached."""
    from sparekit.models.loading import CACHE_DIR, default_device
    from sparekit.models.architecture import SUPPORTED_ARCHITECTURES
    from sparekit.utils.env import environment_info

    result = {
        **environment_info(),
        "device": default_device(),
        "cache_dir": str(CACHE_DIR),
        "default_model_cache": str(CACHE_DIR / "models" / "gemma-3-270m"),
        "default_model_cached": (CACHE_DIR / "models" / "gemma-3-270m" / "config.json").is_file(),
        "architectures": list(SUPPORTED_ARCHITECTURES),
    }

    def render(r: dict) -> str:
        lines = [f"python {r['python']} on {r['platform']}", f"device: {r['device']} ({r['threads']} threads)"]
        lines += [f"  {k}: {v}" for k, v in r["packages"].items()]
        lines.append(f"default model cache: {r['default_model_cache']} ({'ready' if r['default_model_cached'] else 'built on first use'})")
        lines.append(f"architectures: {', '.join(r['architectures'])}")
        return "\n".join(lines)

    emit(result, as_json, render)


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
