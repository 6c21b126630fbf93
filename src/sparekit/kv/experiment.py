"""``sparekit kv bench`` and ``kv conflict`` as config dataclasses with a ``run()``.

Each is a :class:`~sparekit.kv.bench.KVGrid` (methods, ratios and the press options,
checked when built) plus what to run it on and where; the CLI only prints the result.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

from sparekit.data import load_dataset
from sparekit.data.loaders import NQSWAP_LOCAL
from sparekit.errors import SparekitError
from sparekit.evaluation.harness import condition_prompts
from sparekit.kv.bench import KVBenchConfig, KVGrid, markdown_tables, plot_bench, run_bench
from sparekit.kv.sweep import conflict_shares
from sparekit.models import load_model
from sparekit.models.loading import LoadedModel
from sparekit.sae.corpus import nqswap_passages
from sparekit.utils.config import DATASET_HELP, device_field, model_field, option
from sparekit.utils.io import atomic_write_json, atomic_write_text


def _load(model: str, device: str | None, grid: KVGrid) -> LoadedModel:
    """The model, with the grid's skipped layers checked against it."""
    lm = load_model(model, device=device)
    for layer in grid.skip_layers:
        lm.info.check_layer(layer)
    return lm


#: Shortest ``kv bench`` prompt: room for the passkey or needle question and a haystack around it.
MIN_BENCH_LENGTH = 64


@dataclass(frozen=True)
class KVBenchExperiment(KVBenchConfig):
    """``sparekit kv bench``: passkey, needle and perplexity vs compression ratio, every method side by side."""

    model: str = model_field()
    out: str | None = option(None, help="Run directory (default runs/kv-bench-<model>); rerun to resume.")
    device: str | None = device_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        # a prompt shorter than min_length is never compressed, and one shorter than MIN_BENCH_LENGTH has no
        # haystack: every ratio would score the same, which reads as a result
        shortest = max(self.min_length, MIN_BENCH_LENGTH)
        short = [n for n in self.lengths if n < shortest]
        if short:
            raise SparekitError(f"--lengths {','.join(map(str, short))}: below {shortest} tokens nothing is "
                                f"compressed (--min-length {self.min_length}) or hidden", f"give lengths >= {shortest}")

    def bench_config(self) -> KVBenchConfig:
        """The :class:`KVBenchConfig` part: what the run directory records and compares."""
        return KVBenchConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(KVBenchConfig)})

    def run(self) -> dict:
        """The summary (``results.json``), with ``plot``, ``table`` (``results.md``) and ``run_dir``."""
        passages: list[str] = []
        if {"needle", "perplexity"} & set(self.tasks):
            if not NQSWAP_LOCAL.is_file():
                raise SparekitError(f"the Wikipedia passages (NQ-Swap contexts) are missing at {NQSWAP_LOCAL}",
                                    "run only --tasks passkey, or place the shared data beside the repository")
            passages = nqswap_passages(NQSWAP_LOCAL)[1]
        lm = _load(self.model, self.device, self)
        out_dir = Path(self.out or f"runs/kv-bench-{lm.info.model_hash[:8]}")
        summary = run_bench(lm, self.bench_config(), out_dir, passages)
        summary["plot"] = str(plot_bench(summary, out_dir / "kv_bench.png"))
        atomic_write_json(out_dir / "results.json", summary)
        table = markdown_tables(summary)
        atomic_write_text(out_dir / "results.md", table + "\n")
        return {**summary, "table": table, "run_dir": str(out_dir)}


@dataclass(frozen=True)
class KVConflictExperiment(KVGrid):
    """``sparekit kv conflict``: knowledge-source shares of conflicting-context answers vs compression ratio.

    As ``benchmarks/bench_kv_ruler.py conflict`` (one library function,
    :func:`~sparekit.kv.sweep.answer_conflicts`): the prompt pass holds the demonstrations and the
    passage, only the passage is compressed, and the question is read through the compressed cache.
    Every passage is compressed, however short (no minimum length).
    """

    dataset: str = option("default", short="-d", help=DATASET_HELP)
    limit: int = option(48, min=1, help="Conflict items (seeded sample).")
    k_shot: int = option(3, min=0, help="Demonstrations per prompt.")
    compress_demonstrations: bool = option(False, help="Compress the demonstrations with the passage (default: the "
                                                       "passage only; the demonstrations are kept uncompressed).")
    min_length: int = option(0, cli=False, help="Prompts shorter than this are not compressed.")
    model: str = model_field()
    out: str | None = option(None, help="Run directory (default runs/kv-conflict-<dataset>-<model>).")
    device: str | None = device_field()

    def run(self) -> dict:
        """The summary (``results.json`` in the run directory): shares per method and ratio."""
        data = load_dataset(self.dataset)
        rows = sorted(random.Random(self.seed).sample(range(len(data)), min(self.limit, len(data))))
        examples = [data[i] for i in rows]
        by_id = condition_prompts(data, "sub", seed=self.seed, k_shot=self.k_shot)
        prompts = [by_id[ex.id] for ex in examples]
        lm = _load(self.model, self.device, self)
        result = conflict_shares(lm, prompts, examples, self, self.compress_demonstrations)
        lengths = [len(lm.tokenizer(p)["input_ids"]) for p in prompts]
        summary = {"model": lm.info.name, "dataset": data.name, "items": len(prompts), "k_shot": self.k_shot,
                   "compressed": "demonstrations and passage" if self.compress_demonstrations else "passage",
                   "prompt_tokens": {"min": min(lengths), "mean": sum(lengths) / len(lengths), "max": max(lengths)},
                   "results": result}
        out_dir = Path(self.out or f"runs/kv-conflict-{data.name}-{lm.info.model_hash[:8]}")
        atomic_write_json(out_dir / "results.json", summary)
        return {**summary, "run_dir": str(out_dir)}
