"""``sparekit capture`` as a config dataclass: a dataset's or a corpus's activations into a store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sparekit.activations.store import capture_activations
from sparekit.data import load_dataset
from sparekit.data.dataset import decode_row, row_id
from sparekit.data.prompts import build_prompt, item_demos
from sparekit.errors import SparekitError
from sparekit.hooks import Site
from sparekit.utils.config import (check_components, device_field, device_map_field, model_field, option, parse_layers)
from sparekit.utils.distributed import local_device
from sparekit.utils.io import ensure_dir


def read_texts(path: Path) -> tuple[list[str], list[str] | None]:
    """Texts from a ``.txt`` file (one per line) or ``.jsonl`` rows with ``text`` and optional ``id``."""
    if not path.is_file():
        raise SparekitError(f"missing texts file: {path}")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise SparekitError(f"{path}: not valid UTF-8 (byte {exc.start})", "re-encode the file as UTF-8") from None
    if path.suffix != ".jsonl":
        return [line for line in lines if line.strip()], None
    texts, ids = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        row = decode_row(line, f"{path}:{number}")
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise SparekitError(f"{path}:{number}: expected a JSON object with a 'text' field holding a string",
                                "fix the row or drop it")
        texts.append(row["text"])
        ids.append(row_id(row, str(len(ids)), f"{path}:{number}"))
    return texts, ids


def dataset_prompts(name: str, context: str, k_shot: int, limit: int | None, seed: int) -> tuple[list[str], list[str]]:
    """Few-shot prompts (org_org demos) of a conflict dataset's items with the chosen context."""
    dataset = load_dataset(name, limit=limit, seed=seed)
    ctx = None if context == "none" else context
    prompts = [build_prompt(ex, ctx, item_demos(ex, dataset, seed, k_shot)) for ex in dataset]
    return prompts, [ex.id for ex in dataset]


@dataclass
class CaptureExperiment:
    """``sparekit capture``: activations of a conflict dataset or a text corpus in a sharded, resumable store."""

    dataset: str | None = option(None, help="Conflict dataset: default, default-passages, broad, broad-passages, nqswap or a .jsonl(.gz) path.")
    texts: str | None = option(None, help="Corpus: .txt (one text per line) or .jsonl with 'text' (and optional 'id').")
    context: str = option("sub", choices=("sub", "org", "none"), help="With --dataset: which context the test item carries.")
    k_shot: int = option(3, min=0, max=16, help="With --dataset: demonstrations.")
    limit: int | None = option(None, min=1, help="With --dataset: seeded sample of N rows.")
    seed: int = option(0, help="Seed for --limit and the demonstrations.")
    model: str = model_field()
    layers: str = option("all", help="all, 6, 4,8,12 or 4-8.")
    components: tuple[str, ...] = option(("resid",), help="resid, attn, mlp (comma-separated).")
    positions: str = option("last", choices=("last", "all"),
                            help="last prompt token (probing) or every real token (SAE training).")
    skip_first_token: bool = option(False, help="With --positions all: drop each text's first token (BOS).")
    dtype: str = option("float16", choices=("float16", "bfloat16", "float32"), help="Storage dtype of the activations.")
    batch_size: int = option(8, min=1, help="Texts per forward pass.")
    max_length: int = option(256, min=0, help="Truncate texts to this many tokens (0: never).")
    shard_rows: int = option(4096, min=1, help="Rows per shard file.")
    out: str | None = option(None, help="Store folder, required (rerun to resume).")
    device: str | None = device_field()
    device_map: str | None = device_map_field()

    def run(self, progress: bool = True) -> dict:
        """Capture into ``out``; returns a summary (rows, texts, sites, shards, dtype, positions, out)."""
        from sparekit.models import load_model  # looked up when the run starts: tests stand in a tiny model

        if (self.dataset is None) == (self.texts is None):
            raise SparekitError("pass exactly one of --dataset and --texts")
        if self.out is None:
            raise SparekitError("no store folder given", "pass --out FOLDER")
        texts, ids = (dataset_prompts(self.dataset, self.context, self.k_shot, self.limit, self.seed)
                      if self.dataset is not None else read_texts(Path(self.texts)))
        components = check_components(self.components)
        ensure_dir(self.out)  # a bad --out fails now, not after loading the model
        lm = load_model(self.model, device=local_device(self.device), device_map=self.device_map)
        sites = [Site(layer, c) for layer in parse_layers(self.layers, lm.info.n_layers) for c in components]
        store = capture_activations(lm, texts, sites, self.out, positions=self.positions,
                                    skip_first_token=self.skip_first_token, ids=ids, dtype=self.dtype,
                                    batch_size=self.batch_size, max_length=self.max_length or None,
                                    shard_rows=self.shard_rows, progress=progress)
        return {"out": str(self.out), "rows": len(store), "texts": len(texts), "sites": store.manifest["sites"],
                "shards": len(store.manifest["shards"]), "dtype": store.manifest["dtype"], "positions": self.positions}
