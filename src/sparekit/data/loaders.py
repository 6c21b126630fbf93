"""Resolve a dataset name or path to a :class:`ConflictDataset`, local files first.

``default`` is the embedded country-facts dataset shipped in the package
(``default-passages``: the same rows with paragraph contexts); ``broad`` is the embedded broad
corpus of many relations in several kinds (``broad-passages`` its paragraph variant, built by
``sparekit data build-broad``); ``nqswap``
is the NQ-Swap dev file shipped in the package (``assets/datasets/nqswap``, with its
provenance and CC BY-SA 3.0 note), or, only where that file was removed and a hub is
reachable, the hub id ``pminervini/NQ-Swap`` through the optional ``datasets`` package;
anything else is a JSONL(.gz) path in the NQ-Swap schema. A file whose name contains ``macnoise`` is
judged with Macnoise's substring rule for "uses context".
"""

from __future__ import annotations

import os
from pathlib import Path

from sparekit.data.dataset import ConflictDataset, ContextMatch, parse_row, read_jsonl
from sparekit.errors import SparekitError
from sparekit.utils.registry import unknown_name

NQSWAP_HUB_ID = "pminervini/NQ-Swap"
DATASET_NAMES = ("default", "default-passages", "broad", "broad-passages", "nqswap")
DEFAULT_ASSET = Path(__file__).resolve().parents[1] / "assets" / "datasets" / "default.jsonl"
PASSAGES_ASSET = DEFAULT_ASSET.with_name("default-passages.jsonl")
BROAD_ASSET = DEFAULT_ASSET.with_name("broad.jsonl")
BROAD_PASSAGES_ASSET = DEFAULT_ASSET.with_name("broad-passages.jsonl")
NQSWAP_LOCAL = DEFAULT_ASSET.parent / "nqswap" / "dev.jsonl.gz"


def _default_dataset() -> ConflictDataset:
    if not DEFAULT_ASSET.is_file():
        # deliberately lazy: building the default dataset needs its optional sources, only on a first run
        from sparekit.data.default import build_default_dataset, write_default_dataset
        from sparekit.utils.io import cache_dir  # lazy, as above

        cached = cache_dir() / "data" / "default.jsonl"
        if not cached.is_file():
            write_default_dataset(build_default_dataset(), cached)
        return read_jsonl(cached, name="default")
    return read_jsonl(DEFAULT_ASSET, name="default")


def _broad(name: str) -> ConflictDataset:
    """The shipped broad corpus: rebuilding it runs the model's closed-book filter, so it is never built silently."""
    path = BROAD_ASSET if name == "broad" else BROAD_PASSAGES_ASSET
    if not path.is_file():
        raise SparekitError(f"the {name} dataset is not in this installation ({path})",
                            "reinstall sparekit, or build it with 'sparekit data build-broad --out F' and pass F")
    return read_jsonl(path, name=name)


def _nqswap() -> ConflictDataset:
    if NQSWAP_LOCAL.is_file():
        return read_jsonl(NQSWAP_LOCAL, name="nqswap")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise SparekitError(f"NQ-Swap is not in this installation ({NQSWAP_LOCAL}) and the hub is offline",
                            "reinstall sparekit, or pass the path of a local NQ-Swap .jsonl(.gz) file")
    try:
        import datasets  # optional dependency: only downloading NQ-Swap from the hub needs it
    except ImportError:
        raise SparekitError(
            "NQ-Swap is not available locally and the 'datasets' package is not installed",
            f"pip install datasets (hub id {NQSWAP_HUB_ID}) or pass the path of a local dev.jsonl.gz",
        ) from None
    try:
        rows = datasets.load_dataset(NQSWAP_HUB_ID, split="dev")
    except Exception as exc:  # network and hub errors come in many types
        raise SparekitError(f"cannot load {NQSWAP_HUB_ID} from the hub: {exc}",
                            "pass the path of a local NQ-Swap .jsonl(.gz) file") from None
    examples = [parse_row(dict(row), f"{NQSWAP_HUB_ID}:{i + 1}", f"nqswap-{i + 1}") for i, row in enumerate(rows)]
    return ConflictDataset(examples, "nqswap")


def load_dataset(name_or_path: str, limit: int | None = None, seed: int = 0,
                 context_match: ContextMatch | None = None) -> ConflictDataset:
    """Load ``default``, ``broad`` (and their ``-passages`` variants), ``nqswap`` or a JSONL(.gz) path;
    ``limit`` keeps a seeded sample of rows drawn as whole question groups.

    ``context_match`` overrides the "uses context" rule (``answer`` or ``substring``);
    by default files named ``*macnoise*`` use ``substring``.
    """
    name = str(name_or_path)
    if name == "default":
        dataset = _default_dataset()
    elif name == "default-passages":
        dataset = read_jsonl(PASSAGES_ASSET, name="default-passages")
    elif name in ("broad", "broad-passages"):
        dataset = _broad(name)
    elif name == "nqswap":
        dataset = _nqswap()
    elif Path(name).suffix in (".jsonl", ".gz", ".json") or Path(name).exists():
        path = Path(name)
        rule: ContextMatch = "substring" if "macnoise" in path.name.lower() else "answer"
        dataset = read_jsonl(path, context_match=rule)
    else:
        raise _unknown_dataset(name)
    if context_match is not None:
        dataset = ConflictDataset(list(dataset), dataset.name, context_match)
    return dataset if limit is None else dataset.sample(limit, seed)


def _unknown_dataset(name: str) -> SparekitError:
    error = unknown_name("dataset", name, DATASET_NAMES)
    return SparekitError(error.message, f"{error.hint}, or a .jsonl(.gz) path")


def check_dataset_name(name_or_path: str) -> None:
    """Refuse, without reading anything, a name :func:`load_dataset` would refuse: an unknown short name
    or a missing file (``--dry-run`` checks what the run would)."""
    name = str(name_or_path)
    if name in DATASET_NAMES or Path(name).exists():
        return
    if Path(name).suffix not in (".jsonl", ".gz", ".json"):
        raise _unknown_dataset(name)
    read_jsonl(Path(name))  # a missing file: raises the run's own error, reading nothing
