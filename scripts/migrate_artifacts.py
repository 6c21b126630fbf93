"""Rewrite saved sparekit objects (probes, gates, steering methods) in the current format, in place.

    PYTHONPATH=src python3 scripts/migrate_artifacts.py src/sparekit/assets/probes src/sparekit/assets/steering

Every folder under the given roots with a ``config.json`` naming a ``kind`` is read with
:func:`sparekit.load` (which still reads older formats) and saved again; side files such
as ``tuned.json`` and ``detect.json`` are left alone, a format-1 gate's ``gate.json`` is
folded into its ``config.json`` and removed. Tensors keep their dtype.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import sparekit
from sparekit.artifacts import CONFIG, FORMAT_VERSION


def main(roots: list[str]) -> None:
    for root in roots:
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
