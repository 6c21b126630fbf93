"""``sparekit sae train|eval|features|convert`` as config dataclasses: train one SAE per layer, score SAEs,
show what their latents read, convert other formats."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sparekit.errors import SparekitError
from sparekit.hooks import Site
from sparekit.sae import check_compatible, load_sae, save_sae, shipped_layers
from sparekit.sae.corpus import corpus_path, corpus_windows, token_windows
from sparekit.sae.train import StoreSource, TopKTrainer
from sparekit.utils.config import config_dict, device_field, device_map_field, model_field, option
from sparekit.utils.io import atomic_write_text, sha256_file
from sparekit.utils.rundir import RunDir

if TYPE_CHECKING:
    from sparekit.models.loading import LoadedModel

CORPUS_HELP = ("'nqswap' (the NQ-Swap dev file shipped in the package), an NQ-Swap-style .jsonl(.gz), or a .txt file "
               "(one text per line; all of it is evaluation text).")
HOLDOUT_HELP = "Share of question groups held out."
#: --holdout's bounds: 0 leaves no evaluation text, 1 (or more) none to train on
HOLDOUT_RANGE = {"min": 0.0, "max": 1.0, "min_open": True, "max_open": True}
SEED_HELP = "Seed for the held-out split and training."


def eval_texts(lm: LoadedModel, corpus: str, holdout: float, seed: int) -> list[str]:
    """Held-out NQ-Swap windows, or every line of a text file."""
    # deliberately lazy: these import transformers, which `sparekit sae --help` must not pay for
    from sparekit.activations.experiment import read_texts

    path = corpus_path(corpus)
    if path.suffix == ".txt":
        return token_windows(lm.tokenizer, read_texts(path)[0])
    return corpus_windows(lm.tokenizer, path, holdout, seed)[1]


def check_saes(lm: LoadedModel, saes: list, sources: Sequence[str | None] | None = None) -> None:
    """Refuse SAEs that do not read this model's activations (the evaluation functions place each
    one where its layer computes); ``sources`` (the files they came from) name them in the error."""
    for sae_model, source in zip(saes, sources or [None] * len(saes), strict=True):
        check_compatible(sae_model, lm.info, source)


@dataclass
class SaeTrainExperiment:
    """Capture activations once (all layers in one pass, BOS dropped), then train one SAE per layer."""

    model: str = model_field()
    layers: tuple[int, ...] = option((5, 6, 7, 8), help="Comma-separated layers (block outputs).")
    out: str = option("runs/sae/default", help="Run folder: activations, checkpoints and one SAE folder per layer "
                                               "(resid.L).")
    corpus: str = option("nqswap", help=CORPUS_HELP)
    holdout: float = option(0.1, help=HOLDOUT_HELP, **HOLDOUT_RANGE)
    seed: int = option(0, help=SEED_HELP)
    width: int = option(2048, min=2, help="Number of latents (d_sae).")
    k: int = option(64, min=1, help="Active latents per token.")
    architecture: str = option("topk", choices=("topk", "batchtopk"), help="SAE architecture.")
    epochs: float = option(1.0, min=0.0, min_open=True, help="Passes over the training tokens.")
    lr: float = option(2e-3, min=0.0, min_open=True, help="Peak Adam learning rate (warm-up, then linear decay).")
    batch_size: int = option(512, min=1, help="Tokens per optimiser step.")
    max_texts: int | None = option(None, min=1, help="Train on the first N corpus windows only (<=256 tokens each).")
    prompts: str | None = option(None, help="A .txt or .jsonl ('text' field) file of prompts added whole to the "
                                            "training texts, e.g. a steering run's behaviour_prompts.jsonl: its "
                                            "pool's few-shot conflict prompts, the inputs SpARE reads.")
    save_dtype: str = option("float16", choices=("float16", "float32"), help="dtype of the saved SAE weights.")
    device: str | None = device_field()
    device_map: str | None = device_map_field()

    def run(self, on_layer: Callable[[dict], None] | None = None) -> list[dict]:
        """Train (or reuse) each layer's SAE under ``out``; one summary per layer, also passed to ``on_layer``.

        Rerunning the same config resumes: finished shards, checkpoints and finished SAEs are reused.
        """
        # deliberately lazy: these import transformers, which `sparekit sae --help` must not pay for
        from sparekit.activations import capture_activations
        from sparekit.activations.experiment import read_texts  # lazy, as above
        from sparekit.models import load_model  # lazy, as above

        out, layers = Path(self.out), list(self.layers)
        prompts = read_texts(Path(self.prompts))[0] if self.prompts else []
        config = {"model": self.model, "layers": layers, "corpus": str(corpus_path(self.corpus)),
                  "prompts": self.prompts and {"path": self.prompts, "sha256": sha256_file(self.prompts),
                                               "texts": len(prompts)},
                  "holdout": self.holdout, "seed": self.seed, "width": self.width, "k": self.k,
                  "architecture": self.architecture, "epochs": self.epochs, "lr": self.lr,
                  "batch_size": self.batch_size, "max_texts": self.max_texts, "save_dtype": self.save_dtype}
        summaries = []
        with RunDir(out, "SAE training", config_file="run.json").session(config, experiment=config_dict(self)):
            lm = load_model(self.model, device=self.device, device_map=self.device_map)
            for layer in layers:
                lm.info.check_layer(layer)
            texts = corpus_windows(lm.tokenizer, corpus_path(self.corpus), self.holdout, self.seed)[0][:self.max_texts]
            texts += prompts  # whole: SpARE reads a prompt's last token, which a window cut would lose
            store = capture_activations(lm, texts, [Site(L) for L in layers], out / "acts", positions="all",
                                        skip_first_token=True, dtype="float16", batch_size=8, max_length=None,
                                        shard_rows=16384)
            del lm
            for layer in layers:
                target = out / f"resid.{layer}"
                if (target / "cfg.json").is_file():
                    summary = {"layer": layer, "path": str(target), "reused": True}
                else:
                    trainer = TopKTrainer(d_sae=self.width, k=self.k, architecture=self.architecture, lr=self.lr,
                                          epochs=self.epochs, seed=self.seed, device=self.device,
                                          checkpoint_dir=out / f"checkpoint.{layer}")
                    trainer.fit(StoreSource(store, Site(layer), batch_size=self.batch_size, seed=self.seed),
                                hook_layer=layer)
                    last = trainer.history_[-1]
                    save_sae(trainer.sae_, target, dtype=getattr(torch, self.save_dtype), extra={"training": {
                        **config, "layers": [layer], "tokens_per_epoch": len(store),
                        "tokens_seen": trainer.tokens_seen_, "skipped_outlier_rows": trainer.skipped_rows_,
                        "final_train_fvu_standardised": last["fvu"], "final_dead_fraction": trainer.dead_fraction_}})
                    summary = {"layer": layer, "path": str(target), "reused": False, "tokens": trainer.tokens_seen_,
                               "train_fvu": last["fvu"], "dead_fraction": trainer.dead_fraction_}
                summaries.append(summary)
                if on_layer is not None:
                    on_layer(summary)
        return summaries


@dataclass
class SaeEvalExperiment:
    """``sparekit sae eval``: FVU, L0, dead share and LM loss recovered on held-out text (BOS never spliced)."""

    model: str = model_field()
    sae: tuple[str, ...] = option((), multiple=True, help="SAE folder/file (repeatable); default: the shipped SAEs.")
    layers: tuple[int, ...] | None = option(None, help="Shipped SAEs to evaluate (default: all shipped layers).")
    corpus: str = option("nqswap", help=CORPUS_HELP)
    holdout: float = option(0.1, help=HOLDOUT_HELP, **HOLDOUT_RANGE)
    seed: int = option(0, help=SEED_HELP)
    max_tokens: int | None = option(None, min=1, help="Tokens for FVU/L0/dead share (default: all held-out).")
    ce_tokens: int = option(4096, min=1, help="Tokens for the loss-recovered runs.")
    device: str | None = device_field()
    device_map: str | None = device_map_field()

    def run(self, progress: bool = True) -> dict:
        """``{"layers": [one row per SAE]}`` (:func:`~sparekit.sae.evaluate.evaluate_saes`)."""
        # deliberately lazy: these import transformers, which `sparekit sae --help` must not pay for
        from sparekit.models import load_model
        from sparekit.sae.evaluate import evaluate_saes  # lazy, as above

        # the SAEs load before the model, so a bad file fails fast
        saes = ([load_sae(p) for p in self.sae] if self.sae
                else [load_sae("default", layer=L) for L in (self.layers or shipped_layers())])
        lm = load_model(self.model, device=self.device, device_map=self.device_map)
        check_saes(lm, saes, self.sae or None)
        texts = eval_texts(lm, self.corpus, self.holdout, self.seed)
        return {"layers": evaluate_saes(lm, saes, texts, max_tokens=self.max_tokens, ce_tokens=self.ce_tokens,
                                        progress=progress)}


@dataclass(frozen=True)
class SaeFeaturesCommand:
    """``sparekit sae features``: held-out snippets that activate chosen latents most (the token in [[ ]])."""

    model: str = model_field()
    layer: int | None = option(None, help="Shipped SAE of this layer.")
    sae: str | None = option(None, help="SAE folder/file instead of a shipped one.")
    latents: tuple[int, ...] = option(tuple(range(10)), help="Comma-separated latent ids.")
    top: int = option(5, min=1, help="Snippets per latent.")
    corpus: str = option("nqswap", help=CORPUS_HELP)
    holdout: float = option(0.1, help=HOLDOUT_HELP, **HOLDOUT_RANGE)
    seed: int = option(0, help=SEED_HELP)
    max_tokens: int | None = option(None, min=1, help="Scan at most this many tokens.")
    html: str | None = option(None, help="Also write a shaded HTML view here.")
    device: str | None = device_field()
    device_map: str | None = device_map_field()

    def __post_init__(self) -> None:
        if (self.layer is None) == (self.sae is None):
            raise SparekitError("pass exactly one of --layer and --sae")

    def run(self) -> dict:
        """``{"layer", "latents"}``: each latent's top snippets (:func:`~sparekit.sae.evaluate.top_activations`)."""
        # deliberately lazy: these import transformers, which `sparekit sae --help` must not pay for
        from sparekit.models import load_model
        from sparekit.sae.evaluate import render_html, top_activations  # lazy, as above

        sae_model = load_sae(self.sae or "default", layer=self.layer)
        lm = load_model(self.model, device=self.device, device_map=self.device_map)
        check_saes(lm, [sae_model], [self.sae])
        bad = [i for i in self.latents if not 0 <= i < sae_model.d_sae]
        if bad:
            raise SparekitError(f"latents {bad} out of range", f"this SAE has latents 0..{sae_model.d_sae - 1}")
        result = top_activations(lm, sae_model, eval_texts(lm, self.corpus, self.holdout, self.seed),
                                 list(self.latents), top=self.top, max_tokens=self.max_tokens, progress=True)
        if self.html:
            atomic_write_text(self.html, render_html(result, f"{lm.info.name} layer {sae_model.hook_layer} SAE"))
        return {"layer": sae_model.hook_layer, "latents": result}


@dataclass(frozen=True)
class SaeConvertCommand:
    """``sparekit sae convert``: a Gemma Scope / Gemma Scope 2 / sparsify / SAELens SAE as a SAELens folder."""

    source: str = option(argument=True, help="The SAE to convert.")
    dest: str = option(argument=True, help="The SAELens folder to write.")
    layer: int | None = option(None, help="Layer the SAE reads, if the files do not say.")
    save_dtype: str = option("float32", choices=("float16", "float32"), help="dtype of the saved SAE weights.")

    def run(self) -> dict:
        """What was converted: source, destination, architecture, sizes and layer."""
        loaded = load_sae(self.source, layer=self.layer)
        save_sae(loaded, self.dest, dtype=getattr(torch, self.save_dtype))
        return {"source": self.source, "dest": self.dest, "architecture": loaded.architecture, "d_in": loaded.d_in,
                "d_sae": loaded.d_sae, "layer": loaded.hook_layer}
