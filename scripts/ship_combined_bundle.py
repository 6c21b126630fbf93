"""Ship a combined bundle of a `bench steer` run for the default model (issue 29): by default the run's
``spare+cad+recall`` (SpARE's edit and CAD's contrast where the recall gate fires), as ``spare+cad``.

The run fits and dev-tunes it (SpARE's features and strength per direction; CAD's strength is its grid's one
value); the shipped copy keeps all of that and takes the shipped SpARE's demonstrations instead of the run's,
as the shipped CAD and AdaCAD bundles do, so ``sparekit steer`` builds the same prompt whichever shipped method
it is given. BENCHMARKS.md ("A shipped SpARE + CAD bundle") has the run's command.

    python3 scripts/ship_combined_bundle.py runs/broad-indist/fitted/spare+cad+recall
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from sparekit.models.assets import default_assets
from sparekit.steering.combined import Combined
from sparekit.steering.fitted import FittedBundle, shipped_root


def shipped_copy(run_bundle: Path, label: str) -> FittedBundle:
    """``run_bundle`` (tuned on the default model, a combination in each direction) relabelled ``label`` with the
    shipped SpARE's demonstrations."""
    bundle = FittedBundle.load(run_bundle, default_assets().model_hash)
    if not all(isinstance(f.method, Combined) for f in bundle.directions.values()):
        raise SystemExit(f"{run_bundle} is not a combined method's bundle (e.g. <run>/fitted/spare+cad+recall)")
    demos = FittedBundle.load(shipped_root("spare")).demos
    directions = {t: dataclasses.replace(f, demos=demos) for t, f in bundle.directions.items()}
    return FittedBundle(label, directions, demos, bundle.model_hash, bundle.gate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="<run>/fitted/<combined label> of a `sparekit bench steer` run")
    parser.add_argument("--label", default="spare+cad", help="the shipped label (default: spare+cad)")
    parser.add_argument("--out", type=Path, default=default_assets().steering_root,
                        help="folder of the shipped bundles (default: the package's)")
    args = parser.parse_args()
    print(shipped_copy(args.bundle, args.label).save(args.out / args.label))


if __name__ == "__main__":
    main()
