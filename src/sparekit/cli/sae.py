"""``sparekit sae train|eval|features|convert``: sparse autoencoders for one model's residual stream."""

from __future__ import annotations

import click

from sparekit.cli.common import (device_map_option, device_option, emit, json_option, model_option, no_verify_option,
                                 parse_list)
from sparekit.cli.config import config_options
from sparekit.sae.experiment import (CORPUS_HELP, HOLDOUT_HELP, HOLDOUT_RANGE, SEED_HELP, SaeEvalExperiment,
                                     SaeTrainExperiment, check_saes, eval_texts)

corpus_option = click.option("--corpus", default="nqswap", show_default=True, help=CORPUS_HELP)
holdout_option = click.option("--holdout", default=0.1, show_default=True, type=click.FloatRange(**HOLDOUT_RANGE),
                              help=HOLDOUT_HELP)
seed_option = click.option("--seed", default=0, show_default=True, help=SEED_HELP)


@click.group()
def sae() -> None:
    """Train, evaluate, inspect and convert sparse autoencoders.

    \b
    Shipped: TopK SAEs for Gemma 3 270M at layers 5-12 (load_sae("default", layer=6)).
    """


@sae.command()
@config_options(SaeTrainExperiment)
@no_verify_option
def train(config: SaeTrainExperiment) -> None:
    """Capture activations once (all layers in one pass, BOS dropped), then train one SAE per layer.

    Rerunning the same command resumes: finished shards, checkpoints and finished SAEs are reused.
    """

    def report(r: dict) -> None:
        if r["reused"]:
            click.echo(f"layer {r['layer']}: already trained at {r['path']}")
        else:
            click.echo(f"layer {r['layer']}: {r['tokens']} tokens, train FVU {r['train_fvu']:.4f}, "
                       f"dead {r['dead_fraction']:.3f} -> {r['path']}")

    config.run(on_layer=report)


def _render_eval(result: dict) -> str:
    head = f"{'layer':>5} {'width':>6} {'k':>4} {'FVU':>7} {'FVU/dim':>7} {'L0':>6} {'dead':>6} " \
           f"{'CE clean':>8} {'CE SAE':>8} {'CE zero':>8} {'recovered':>9}"
    rows = [f"{r['layer']:>5} {r['d_sae']:>6} {r['k'] or '-':>4} {r['fvu']:7.4f} {r['fvu_per_dim']:7.4f} "
            f"{r['l0']:6.1f} {r['dead_fraction']:6.3f} {r['ce_clean']:8.4f} {r['ce_spliced']:8.4f} "
            f"{r['ce_zero']:8.4f} {100 * r['loss_recovered']:8.1f}%" for r in result["layers"]]
    return "\n".join([head, *rows])


@sae.command("eval")
@config_options(SaeEvalExperiment)
@no_verify_option
@json_option
def eval_command(config: SaeEvalExperiment, as_json: bool) -> None:
    """FVU, L0, dead share and LM loss recovered on held-out text (BOS never spliced)."""
    emit(config.run(), as_json, _render_eval)


@sae.command()
@model_option
@click.option("--layer", type=int, default=None, help="Shipped SAE of this layer.")
@click.option("--sae", "sae_path", default=None, help="SAE folder/file instead of a shipped one.")
@click.option("--latents", default="0,1,2,3,4,5,6,7,8,9", show_default=True, help="Comma-separated latent ids.")
@click.option("--top", default=5, show_default=True, type=click.IntRange(1), help="Snippets per latent.")
@corpus_option
@holdout_option
@seed_option
@click.option("--max-tokens", default=None, type=click.IntRange(1), help="Scan at most this many tokens.")
@click.option("--html", "html_path", default=None, help="Also write a shaded HTML view here.")
@json_option
@device_option
@device_map_option
def features(model, layer, sae_path, latents, top, corpus, holdout, seed, max_tokens, html_path, as_json,
             device, device_map) -> None:
    """Held-out snippets that activate chosen latents most (the token in [[ ]])."""
    from sparekit.errors import SparekitError
    from sparekit.models import load_model
    from sparekit.sae import load_sae
    from sparekit.sae.evaluate import render_html, render_text, top_activations
    from sparekit.utils.io import atomic_write_text

    if (layer is None) == (sae_path is None):
        raise SparekitError("pass exactly one of --layer and --sae")
    sae_model = load_sae(sae_path or "default", layer=layer)
    lm = load_model(model, device=device, device_map=device_map)
    check_saes(lm, [sae_model], [sae_path])
    ids = parse_list(latents, int, "--latents")
    bad = [i for i in ids if not 0 <= i < sae_model.d_sae]
    if bad:
        raise SparekitError(f"latents {bad} out of range", f"this SAE has latents 0..{sae_model.d_sae - 1}")
    result = top_activations(lm, sae_model, eval_texts(lm, corpus, holdout, seed), ids, top=top,
                             max_tokens=max_tokens, progress=True)
    if html_path:
        atomic_write_text(html_path, render_html(result, f"{lm.info.name} layer {sae_model.hook_layer} SAE"))
    emit({"layer": sae_model.hook_layer, "latents": result}, as_json, lambda r: render_text(r["latents"]))


@sae.command()
@click.argument("source")
@click.argument("dest")
@click.option("--layer", type=int, default=None, help="Layer the SAE reads, if the files do not say.")
@click.option("--save-dtype", type=click.Choice(["float16", "float32"]), default="float32", show_default=True)
@json_option
def convert(source, dest, layer, save_dtype, as_json) -> None:
    """Convert a Gemma Scope / Gemma Scope 2 / sparsify / SAELens SAE to a SAELens folder.

    
    A SAELens TopK saved with rescale_acts_by_decoder_norm is written with the decoder
    norms folded into the weights: SAELens reads the result with the same codes and
    reconstructions, without the flag.
    """
    import torch

    from sparekit.sae import load_sae, save_sae

    loaded = load_sae(source, layer=layer)
    save_sae(loaded, dest, dtype=getattr(torch, save_dtype))
    emit({"source": source, "dest": dest, "architecture": loaded.architecture, "d_in": loaded.d_in,
          "d_sae": loaded.d_sae, "layer": loaded.hook_layer},
         as_json, lambda r: f"{r['architecture']} SAE {r['d_in']}x{r['d_sae']} (layer {r['layer']}) -> {r['dest']}")
