"""The demo's measured table for fitted bundles on more items: e.g. the shipped SpARE against its refit.

Each bundle steers the same conflicts, built as every command builds them (the request-time prompt builder of
the default model's shipped probes, ``--prompt-format``), toward memory and toward the context, alone and
behind its gate and the recall gate (:func:`sparekit.steering.demo.measured_table`): EM counts out of the
items, and how often each gate fires with the conflicting and with the true context. Items: the demo's twelve
held-out conflicts (default), or a ``bench steer`` run's test split (``--run``; e.g. one that fitted a candidate
bundle, so no item was fitted or tuned on), optionally only some relations (``--relations``) or all but some
(``--exclude-relations``).

    python benchmarks/bundle_table.py spare runs/refit/spare --run runs/broad-indist
    python benchmarks/bundle_table.py spare runs/refit/spare --run runs/broad-indist \
      --exclude-relations capital,continent,currency,city_country       # relations the old fit never saw
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparekit.data import load_dataset
from sparekit.data.dataset import ConflictExample
from sparekit.models.loading import LoadedModel
from sparekit.steering.bench.data import benchmark_splits, memorised_items
from sparekit.steering.bench.protocol import BenchConfig
from sparekit.steering.demo import held_out_items, load_default, measured_table
from sparekit.steering.fitted import FittedBundle, shipped_root
from sparekit.utils.io import read_json


def run_test_split(lm: LoadedModel, run: Path) -> list[ConflictExample]:
    """The test items of a ``bench steer`` run, split from its recorded config and memorised ids as the run split
    them (:func:`~sparekit.steering.bench.data.memorised_items`, then ``benchmark_splits``)."""
    recorded = read_json(run / "config.json")
    config = BenchConfig.from_record(recorded)
    dataset = load_dataset(recorded["dataset"])
    memorised = memorised_items(lm, dataset, run / "memorised.json", config.k_shot, batch_size=8)
    return list(benchmark_splits(memorised, dataset, config)[2])


def bundle_folder(name: str) -> Path:
    """A folder, or the label of a bundle shipped for the default model."""
    return Path(name) if Path(name).is_dir() else shipped_root(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", help="bundle folders or shipped labels (spare, cad, …)")
    parser.add_argument("--run", type=Path, help="take a bench steer run's test split (default: the demo's items)")
    parser.add_argument("--relations", help="comma-separated: only these relations' items")
    parser.add_argument("--exclude-relations", help="comma-separated: leave these relations' items out")
    parser.add_argument("--prompt-format", default="three_shot")
    parser.add_argument("--json", action="store_true", help="print the tables as JSON")
    args = parser.parse_args()
    lm, _, builder = load_default(args.prompt_format, None, None)
    items = held_out_items() if args.run is None else run_test_split(lm, args.run)
    if args.relations:
        items = [ex for ex in items if ex.relation in args.relations.split(",")]
    if args.exclude_relations:
        items = [ex for ex in items if ex.relation not in args.exclude_relations.split(",")]
    if not items:
        raise SystemExit("no items left: check --relations / --exclude-relations against the items' relations")
    tables = {name: measured_table(lm, FittedBundle.load(bundle_folder(name), lm.info.model_hash), builder, items,
                                   progress=True) for name in args.bundles}
    if args.json:
        print(json.dumps(tables, indent=2))
        return
    n = next(iter(tables.values()))["n"]
    print(f"{n} conflicts; EM counts → memory / → context; where a gate fires: conflicting / true contexts\n")
    print("| bundle | row | EM → memory / → context | gate fires |\n|---|---|---|---|")
    for name, table in tables.items():
        for row, em in table["em"].items():
            gate = next((g for suffix, g in table["gates"].items() if row.endswith(suffix)), None)
            fires = "" if gate is None else f"{gate['fired']['sub']} / {gate['fired']['org']} ({gate['gate']})"
            print(f"| {name} | {row} | {em['memory']} / {em['context']} | {fires} |")

if __name__ == "__main__":
    main()
