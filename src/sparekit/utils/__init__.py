"""Small shared helpers: atomic files, hashing, run directories, environment info.

Imported on first use, deliberately (:mod:`sparekit.utils.lazy`): every ``sparekit.utils.x``
import runs this file, which must stay free of torch and numpy for ``sparekit --help``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparekit.utils.lazy import lazy_attributes

if TYPE_CHECKING:
    from sparekit.utils.env import environment_info, seed_everything
    from sparekit.utils.io import atomic_path, atomic_write_json, atomic_write_text, read_json, sha256_file

_IO, _ENV = "sparekit.utils.io", "sparekit.utils.env"
__getattr__, __dir__ = lazy_attributes(__name__, {
    "atomic_path": _IO, "atomic_write_json": _IO, "atomic_write_text": _IO, "read_json": _IO, "sha256_file": _IO,
    "environment_info": _ENV, "seed_everything": _ENV})

__all__ = ["atomic_path", "atomic_write_json", "atomic_write_text", "read_json", "sha256_file", "environment_info",
           "seed_everything"]
