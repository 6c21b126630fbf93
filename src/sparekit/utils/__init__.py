"""Small shared helpers: atomic files, hashing, run directories, environment info."""

from sparekit.utils.io import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    read_json,
    sha256_file,
)
from sparekit.utils.env import environment_info, seed_everything

__all__ = [
    "atomic_path",
    "atomic_write_json",
    "atomic_write_text",
    "read_json",
    "sha256_file",
    "environment_info",
    "seed_everything",
]
