"""Recompute the shipped model fingerprints (run on the pinned CPU stack, float32).

    python scripts/make_fingerprints.py                # default and smollm2-135m
    python scripts/make_fingerprints.py default

Only rerun this when the pinned stack changes on purpose, and say so in BENCHMARKS.md:
the references are what tells a user's broken stack from a working one.
"""

from __future__ import annotations

import sys

from sparekit.models import fingerprint
from sparekit.models.loading import _CACHE_NAMES, load_model


def main(names: list[str]) -> None:
    for name in names or ["default", "smollm2-135m"]:
        lm = load_model(name, device="cpu", verify=False)
        reference = fingerprint.compute_reference(lm.model, lm.tokenizer, name)
        path = fingerprint.reference_path(_CACHE_NAMES[name])
        fingerprint.save_reference(reference, path)
        print(f"{name}: {path} ({reference['stack']})")


if __name__ == "__main__":
    main(sys.argv[1:])
