"""``sparekit capture``: write a dataset's or a corpus's activations to a sharded store."""

from __future__ import annotations

import click

from sparekit.activations.experiment import CaptureExperiment
from sparekit.cli.common import emit, json_option, no_verify_option
from sparekit.cli.config import config_options


@click.command()
@config_options(CaptureExperiment)
@no_verify_option
@json_option
def capture(config: CaptureExperiment, as_json: bool) -> None:
    """Capture activations of a conflict dataset or a text corpus into a sharded, resumable store.

    \b
    Example:
      sparekit capture --dataset nqswap --limit 500 --layers 4-8 --out runs/acts
      sparekit capture --texts corpus.txt --positions all --skip-first-token --layers 6 --out runs/sae6
    Data-parallel (each rank writes its own shards into one store; rank 0 prints):
      torchrun --nproc-per-node 2 -m sparekit capture --dataset nqswap --shard-rows 256 --out runs/acts
    """
    from sparekit.utils.distributed import distributed_from_env

    with distributed_from_env() as (rank, _):
        result = config.run(progress=not as_json)
    if rank == 0:
        emit(result, as_json, lambda r: f"{r['rows']} rows of {len(r['sites'])} site(s) from {r['texts']} texts "
                                        f"in {r['shards']} shard(s) ({r['dtype']}) -> {r['out']}")
