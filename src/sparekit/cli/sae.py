"""``sparekit sae train|eval|features|convert``: sparse autoencoders for one model's residual stream."""

from __future__ import annotations

import click

from sparekit.cli.common import emit, json_option, no_verify_option
from sparekit.cli.config import config_options
from sparekit.sae.experiment import SaeConvertCommand, SaeEvalExperiment, SaeFeaturesCommand, SaeTrainExperiment


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
@config_options(SaeFeaturesCommand)
@no_verify_option
@json_option
def features(config: SaeFeaturesCommand, as_json: bool) -> None:
    """Held-out snippets that activate chosen latents most (the token in [[ ]])."""
    emit(config.run(), as_json, _render_features)


def _render_features(r: dict) -> str:
    from sparekit.sae.evaluate import render_text  # deliberately lazy: it imports transformers (`sae --help`)

    return render_text(r["latents"])


@sae.command()
@config_options(SaeConvertCommand)
@json_option
def convert(config: SaeConvertCommand, as_json: bool) -> None:
    """Convert a Gemma Scope / Gemma Scope 2 / sparsify / SAELens SAE to a SAELens folder.

    \b
    A SAELens TopK saved with rescale_acts_by_decoder_norm is written with the decoder
    norms folded into the weights: SAELens reads the result with the same codes and
    reconstructions, without the flag.
    """
    emit(config.run(), as_json,
         lambda r: f"{r['architecture']} SAE {r['d_in']}x{r['d_sae']} (layer {r['layer']}) -> {r['dest']}")
