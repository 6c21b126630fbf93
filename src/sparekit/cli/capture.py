"""``sparekit capture``: write a dataset's or a corpus's activations to a sharded store."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sparekit.cli.common import device_map_option, device_option, emit, json_option, model_option
from sparekit.errors import SparekitError
from sparekit.utils.config import check_components, parse_layers, parse_list


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
        try:
            row = json.loads(line)
            texts.append(str(row["text"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SparekitError(f"{path}:{number}: expected a JSON object with a 'text' field") from None
        ids.append(str(row.get("id", len(ids))))
    return texts, ids


def dataset_prompts(name: str, context: str, k_shot: int, limit: int | None, seed: int) -> tuple[list[str], list[str]]:
    """Few-shot prompts (org_org demos) of a conflict dataset's items with the chosen context."""
    from sparekit.data import load_dataset
    from sparekit.data.prompts import build_prompt, item_demos

    dataset = load_dataset(name, limit=limit, seed=seed)
    ctx = None if context == "none" else context
    prompts = [build_prompt(ex, ctx, item_demos(ex, dataset, seed, k_shot)) for ex in dataset]
    return prompts, [ex.id for ex in dataset]


@click.command()
@click.option("--dataset", default=None, help="Conflict dataset: default, default-passages, nqswap or a .jsonl(.gz) path.")
@click.option("--texts", "texts_file", type=click.Path(path_type=Path), default=None,
              help="Corpus: .txt (one text per line) or .jsonl with 'text' (and optional 'id').")
@click.option("--context", type=click.Choice(["sub", "org", "none"]), default="sub", show_default=True,
              help="With --dataset: which context the test item carries.")
@click.option("--k-shot", default=3, show_default=True, type=click.IntRange(0, 16), help="With --dataset: demonstrations.")
@click.option("--limit", type=click.IntRange(1), default=None, help="With --dataset: seeded sample of N rows.")
@click.option("--seed", default=0, show_default=True, help="Seed for --limit and the demonstrations.")
@model_option
@click.option("--layers", default="all", show_default=True, help="all, 6, 4,8,12 or 4-8.")
@click.option("--components", default="resid", show_default=True, help="resid, attn, mlp (comma-separated).")
@click.option("--positions", type=click.Choice(["last", "all"]), default="last", show_default=True,
              help="last prompt token (probing) or every real token (SAE training).")
@click.option("--skip-first-token", is_flag=True, help="With --positions all: drop each text's first token (BOS).")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default="float16", show_default=True,
              help="Storage dtype of the activations.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--max-length", default=256, show_default=True, type=click.IntRange(0),
              help="Truncate texts to this many tokens (0: never).")
@click.option("--shard-rows", default=4096, show_default=True, type=click.IntRange(1))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Store folder (rerun to resume).")
@device_option
@device_map_option
@json_option
def capture(dataset, texts_file, context, k_shot, limit, seed, model, layers, components, positions, skip_first_token,
            dtype, batch_size, max_length, shard_rows, out, device, device_map, as_json) -> None:
    """Capture activations of a conflict dataset or a text corpus into a sharded, resumable store.

    \b
    Example:
      sparekit capture --dataset nqswap --limit 500 --layers 4-8 --out runs/acts
      sparekit capture --texts corpus.txt --positions all --skip-first-token --layers 6 --out runs/sae6
    Data-parallel (each rank writes its own shards into one store; rank 0 prints):
      torchrun --nproc-per-node 2 -m sparekit capture --dataset nqswap --shard-rows 256 --out runs/acts
    """
    if (dataset is None) == (texts_file is None):
        raise SparekitError("pass exactly one of --dataset and --texts")
    from sparekit.activations import capture_activations
    from sparekit.hooks import Site
    from sparekit.models import load_model
    from sparekit.utils.io import ensure_dir

    from sparekit.utils.distributed import distributed_from_env, local_device

    if dataset is not None:
        texts, ids = dataset_prompts(dataset, context, k_shot, limit, seed)
    else:
        texts, ids = read_texts(texts_file)
    check_components(parse_list(components, str, "--components"))
    ensure_dir(out)  # a bad --out fails now, not after loading the model
    with distributed_from_env() as (rank, world):
        lm = load_model(model, device=local_device(device), device_map=device_map)
        sites = [Site(layer, c) for layer in parse_layers(layers, lm.info.n_layers)
                 for c in parse_list(components, str, "--components")]
        store = capture_activations(lm, texts, sites, out, positions=positions, skip_first_token=skip_first_token,
                                    ids=ids, dtype=dtype, batch_size=batch_size, max_length=max_length or None,
                                    shard_rows=shard_rows, progress=not as_json)
    if rank != 0:
        return
    result = {"out": str(out), "rows": len(store), "texts": len(texts), "sites": store.manifest["sites"],
              "shards": len(store.manifest["shards"]), "dtype": store.manifest["dtype"], "positions": positions}
    emit(result, as_json, lambda r: f"{r['rows']} rows of {len(r['sites'])} site(s) from {r['texts']} texts "
                                    f"in {r['shards']} shard(s) ({r['dtype']}) -> {r['out']}")
