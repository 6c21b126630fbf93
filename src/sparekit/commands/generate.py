"""``sparekit generate`` and ``sparekit ls``: one greedy continuation; what a model offers to hook."""

from __future__ import annotations

from dataclasses import dataclass

from sparekit.utils.config import DTYPE_HELP, device_field, device_map_field, model_field, option


@dataclass(frozen=True)
class GenerateCommand:
    """Greedy-generate a continuation of PROMPT (no sampling, reproducible)."""

    prompt: str = option(argument=True, help="The text to continue.")
    model: str = model_field()
    max_new_tokens: int = option(12, short="-n", min=1, max=4096, help="Tokens to generate at most.")
    device: str | None = device_field()
    device_map: str | None = device_map_field()
    dtype: str = option("float32", help=DTYPE_HELP)

    def run(self) -> dict:
        """The model's name, the prompt and its continuation."""
        # deliberately lazy: the model stack imports torch and transformers
        from sparekit.evaluation.generation import greedy_generate
        from sparekit.models import load_model  # lazy, as above

        lm = load_model(self.model, dtype=self.dtype, device=self.device, device_map=self.device_map)
        completion = greedy_generate(lm, [self.prompt], max_new_tokens=self.max_new_tokens, stop_at_newline=False)[0]
        return {"model": lm.info.name, "prompt": self.prompt, "completion": completion}


@dataclass(frozen=True)
class LsCommand:
    """A model's blocks and hookable sites (HF module paths and the aliases sparekit reads), and the assets
    shipped for its weights."""

    model: str = model_field()
    device: str | None = device_field()

    def run(self) -> dict:
        """The model's description, its blocks, every hookable site (module path and aliases) and its assets."""
        # deliberately lazy: the model stack imports torch and transformers
        from sparekit.hooks import site_table
        from sparekit.models import load_model  # lazy, as above
        from sparekit.models.assets import assets_for  # lazy, as above

        lm = load_model(self.model, device=self.device or "cpu")
        assets = assets_for(lm.info)
        return {"model": lm.info.to_dict(), "blocks": [lm.info.block_path(layer) for layer in range(lm.info.n_layers)],
                "sites": site_table(lm.info), "assets": None if assets is None else assets.describe()}
