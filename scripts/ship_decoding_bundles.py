"""Write the recall-gated CAD and AdaCAD bundles shipped for the default model (issue 29).

They fit nothing, so a bundle is its settings: per direction the method and its strength, the demonstrations
of the shipped SpARE (so ``sparekit steer`` builds the same prompt whichever shipped method it is given, and no
demonstration asks a question of ``sparekit demo``'s held-out table), and the recall gate, by name. The
strengths are the ones every recall-gated table of BENCHMARKS.md ran: CAD alpha 0.5 and AdaCAD alpha 1, the dev
choices of the four-relation headline table, not chosen on any held-out fold.

    python3 scripts/ship_decoding_bundles.py     # rewrites src/sparekit/assets/steering/gemma-3-270m/{cad,adacad}
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparekit.models.assets import default_assets
from sparekit.steering.base import DIRECTIONS, fitted_without_data
from sparekit.steering.fitted import FittedBundle, FittedSteering, shipped_root
from sparekit.steering.gate import RecallGate

#: per method its strength in both directions (the contrast's weight; AdaCAD scales it per token)
STRENGTHS = {"cad": 0.5, "adacad": 1.0}


def decoding_bundle(kind: str, strength: float) -> FittedBundle:
    """``kind`` with ``strength`` toward memory and context, the shipped SpARE's demonstrations, the recall gate."""
    demos = FittedBundle.load(shipped_root("spare")).demos
    method = fitted_without_data(kind)  # a decoding contrast learns nothing from data
    directions = {toward: FittedSteering(method, strength, demos) for toward in DIRECTIONS}
    return FittedBundle(kind, directions, demos, default_assets().model_hash, RecallGate())  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_assets().steering_root,
                        help="folder of the shipped bundles (default: the package's)")
    args = parser.parse_args()
    for kind, strength in STRENGTHS.items():
        print(decoding_bundle(kind, strength).save(args.out / kind))


if __name__ == "__main__":
    main()
