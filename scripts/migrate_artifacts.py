"""Rewrite saved sparekit objects (probes, gates, steering methods, fitted bundles) in the current format, in place.

    PYTHONPATH=src python3 scripts/migrate_artifacts.py src/sparekit/assets/probes src/sparekit/assets/steering

A fitted folder of the layout before fitted bundles (``<label>/<direction>/tuned.json``, the gate in
``<run>/gate_probe`` or beside the labels in ``gate/``) becomes one
:class:`~sparekit.steering.fitted.FittedBundle` (its settings in the bundle's ``config.json``, the gate
copied into it). Then every other folder with a ``config.json`` naming a ``kind`` is read with
:func:`sparekit.load` (which still reads older formats) and saved again; side files such as
``detect.json`` are left alone, a format-1 gate's ``gate.json`` is folded into its ``config.json`` and
removed. Tensors keep their dtype.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import sparekit
from sparekit.artifacts import CONFIG, FORMAT_VERSION
from sparekit.steering import DIRECTIONS, FittedBundle, FittedSteering, SteeringMethod


def migrate_bundle(folder: Path) -> None:
    """Rewrite one pre-bundle fitted folder (``<direction>/tuned.json``) as a fitted bundle."""
    tuned = {t: json.loads((folder / t / "tuned.json").read_text()) for t in DIRECTIONS
             if (folder / t / "tuned.json").is_file()}
    first = next(iter(tuned.values()))
    demos = tuple(first.get("demos", ()))
    directions = {t: FittedSteering(sparekit.load(folder / t, expect=SteeringMethod), s.get("strength"), demos,
                                    s.get("params", {}), s.get("dev_em")) for t, s in tuned.items()}
    gates = [g for g in (folder.parent.parent / "gate_probe", folder.parent / "gate") if (g / CONFIG).is_file()]
    gate = sparekit.load(gates[0]) if gates else None
    FittedBundle(first.get("label", folder.name), directions, demos, first.get("model_hash"), gate).save(folder)
    print(f"migrated {folder} (tuned.json per direction -> fitted bundle{', gate from ' + str(gates[0]) if gates else ''})")


def main(roots: list[str]) -> None:
    for root in roots:
        for tuned in sorted(Path(root).rglob("tuned.json")):
            if tuned.parent.name in DIRECTIONS and not (tuned.parent.parent / CONFIG).is_file():
                migrate_bundle(tuned.parent.parent)
        for config in sorted(Path(root).rglob(CONFIG)):
            meta = json.loads(config.read_text())
            if "kind" not in meta or meta.get("format_version") == FORMAT_VERSION:
                continue
            folder = config.parent
            sparekit.load(folder).save(folder)
            (folder / "gate.json").unlink(missing_ok=True)
            print(f"migrated {folder} ({meta['kind']}, format {meta.get('format_version')} -> {FORMAT_VERSION})")


if __name__ == "__main__":
    main(sys.argv[1:])
