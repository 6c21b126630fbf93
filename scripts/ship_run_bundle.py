"""Ship a fitted bundle of a `bench steer` run for the default model (issue 29): SpARE refitted on the broad
corpus (``runs/broad-indist/fitted/spare``, as ``spare``), or a combination (``…/spare+cad+recall``, as
``spare+cad``: SpARE's edit and CAD's contrast where the recall gate fires).

The run fits and dev-tunes it (SpARE's features and strength per direction; CAD's strength is its grid's one
value); the shipped copy keeps all of that and takes the shipped SpARE's demonstrations instead of the run's,
as the shipped CAD and AdaCAD bundles do, so ``sparekit steer`` builds the same prompt whichever shipped method
it is given. Its gate is the run bundle's, or with ``--gate-from`` a shipped bundle's (the shipped ``spare`` took
the recall gate of the shipped ``cad`` so). BENCHMARKS.md ("A shipped SpARE + CAD bundle", "The shipped SpARE
refitted on the broad corpus", "The shipped SpARE gates on the recall detector") has the commands.

    python3 scripts/ship_run_bundle.py runs/broad-indist/fitted/spare+cad+recall
    python3 scripts/ship_run_bundle.py src/sparekit/assets/steering/gemma-3-270m/spare --gate-from cad
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from sparekit.models.assets import default_assets
from sparekit.steering.bench.protocol import GATES
from sparekit.steering.fitted import FittedBundle, shipped_root


def shipped_label(folder: Path) -> str:
    """A run bundle's folder name without its gate suffix: ``spare+cad+recall`` -> ``spare+cad``."""
    return "+".join(part for part in folder.name.split("+") if part not in GATES)


def shipped_copy(run_bundle: Path, label: str, gate_from: str | None = None) -> FittedBundle:
    """``run_bundle`` (tuned on the default model) relabelled ``label`` with the shipped SpARE's demonstrations,
    gated by ``gate_from``'s shipped gate if given, else by its own."""
    bundle = FittedBundle.load(run_bundle, default_assets().model_hash)
    shipped_spare = FittedBundle.load(shipped_root("spare"))
    gate = bundle.gate if gate_from is None else FittedBundle.load(shipped_root(gate_from)).require_gate()
    directions = {t: dataclasses.replace(f, demos=shipped_spare.demos) for t, f in bundle.directions.items()}
    return FittedBundle(label, directions, shipped_spare.demos, bundle.model_hash, gate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="<run>/fitted/<label> of a `sparekit bench steer` run")
    parser.add_argument("--label", help="the shipped label (default: the folder's name without +recall / +gate)")
    parser.add_argument("--gate-from", metavar="LABEL", help="take this shipped bundle's gate (e.g. spare)")
    parser.add_argument("--out", type=Path, default=default_assets().steering_root,
                        help="folder of the shipped bundles (default: the package's)")
    args = parser.parse_args()
    label = args.label or shipped_label(args.bundle)
    print(shipped_copy(args.bundle, label, args.gate_from).save(args.out / label))


if __name__ == "__main__":
    main()
