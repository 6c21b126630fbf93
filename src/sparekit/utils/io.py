"""Atomic file writes and cached file hashing.

Every artefact sparekit writes goes through :func:`atomic_path`: the content is
written under a temporary name in the same folder and renamed into place, so an
interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from sparekit.errors import SparekitError

#: What reading a damaged, cut or foreign weights file raises (safetensors, numpy, zip, GGUF readers).
DAMAGED_FILE_ERRORS = (SafetensorError, OSError, EOFError, ValueError, TypeError, KeyError, zipfile.BadZipFile,
                       zlib.error, struct.error)


#: Permission bits of a written artefact before the umask: what a plain ``open()`` gives a new file.
FILE_MODE = 0o666


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create folder ``path`` (and its parents), or say plainly why it cannot be one."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise SparekitError(f"cannot create folder {path}: {blocker} is a file",
                            "choose an output path that is not under an existing file") from None
    except PermissionError:
        raise SparekitError(f"cannot create folder {path}: permission denied") from None
    return path


def file_target(path: str | os.PathLike) -> Path:
    """``path`` as a file to write, its folder created; a folder (or a name ending in ``/``, which
    ``Path`` would silently drop) is refused, so nothing is written under a name the user did not mean."""
    if str(path).endswith(("/", os.sep)):
        raise SparekitError(f"cannot write file {path}: the trailing '/' names a folder",
                            f"name the file, e.g. {os.path.join(path, 'out.jsonl')}")
    path = Path(path)
    if path.is_dir():
        raise SparekitError(f"cannot write file {path}: it is a folder")
    ensure_dir(path.parent)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path = file_target(path)
    tmp_path = _fresh_temp(path)
    mode = stat.S_IMODE(tmp_path.stat().st_mode)  # FILE_MODE less the umask, as the kernel applied it
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)  # writers that recreate the file (safetensors' save_file makes it 0600) lose it
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` whole (a folder
    already there is moved aside, then removed), so a reader finds the old folder or the new one, never a mix."""
    path = Path(path)
    ensure_dir(path.parent)
    tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
    tmp.mkdir()
    try:
        yield tmp
        old = path.parent / f".{path.name}.{os.urandom(6).hex()}.old"
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fresh_temp(path: Path) -> Path:
    """An empty file beside ``path``, created with :data:`FILE_MODE` so the kernel applies the umask: every
    artefact gets the permissions a plain ``open()`` would, without reading (which sets) the process umask."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
            return tmp
        except FileExistsError:
            continue
        except PermissionError:
            raise SparekitError(f"cannot write to {path.parent}: permission denied") from None
    raise SparekitError(f"cannot create a temporary file in {path.parent}")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def check_readable(path: str | os.PathLike) -> None:
    """Refuse a file this user may not read, before a reader reports it as missing or damaged."""
    if os.path.exists(path) and not os.access(path, os.R_OK):
        raise SparekitError(f"cannot read {path}: permission denied",
                            "make it readable (chmod u+r) or run as the user who owns it")


def damaged_file(path: str | os.PathLike, exc: BaseException, hint: str) -> SparekitError:
    """The one-line error for a file a reader choked on: the file, the reader's first line, the fix."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return SparekitError(f"cannot read {path}: {reason}", hint)


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SparekitError(f"missing file: {path}")
    check_readable(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparekitError(f"{path} is not valid JSON: {exc}") from None


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file that must hold one object (a config, a tuned.json): anything else is a damaged file."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise SparekitError(f"{path} must hold a JSON object, got {type(value).__name__}",
                            "the file is damaged; save or fit it again")
    return value


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, what: str = "run") -> Iterator[None]:
    """Hold an exclusive lock on a run folder for a long job; a second process is told and stops.

    The lock is ``fcntl.flock`` on ``<folder>/.lock``: the kernel drops it when the holder
    exits, even on SIGKILL, so a crashed run never blocks the next one; a clean exit also
    removes the file. Inside a torch.distributed process group the ranks share the folder
    and no lock is taken.
    """
    import fcntl  # deliberately lazy: POSIX only, and only a run lock needs it

    from sparekit.utils.distributed import rank_and_world  # deliberately lazy: it imports torch; io must not

    if rank_and_world()[1] > 1:  # the ranks of one data-parallel job share the folder by design
        yield
        return
    lock_path = ensure_dir(folder) / ".lock"
    while True:
        fh = open(lock_path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise SparekitError(f"{folder} is in use by {holder}",
                                f"wait for that {what} to finish, or choose another --out") from None
        try:  # the previous holder may have removed the file between our open and our lock: lock the new one
            if os.stat(lock_path).st_ino == os.fstat(fh.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        fh.close()
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"process {os.getpid()}")
        fh.flush()
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock_path.unlink()  # while still holding it, so no one locks a file about to vanish
        fh.close()


@contextlib.contextmanager
def waiting_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing, never removed), waiting for any holder.

    For work several processes may start at once and only one should do, such as building a cache
    entry: the others wait, then find it built. ``fcntl.flock``, so the kernel drops it if the holder dies.
    """
    import fcntl  # deliberately lazy: POSIX only

    ensure_dir(Path(path).parent)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cache_dir() -> Path:
    """sparekit's cache (models, data, offload folders, file hashes): ``$SPAREKIT_CACHE``, read at each call,
    else ``~/.cache/sparekit``."""
    return Path(os.environ.get("SPAREKIT_CACHE", Path.home() / ".cache" / "sparekit"))


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file, cached by (path, size, mtime) so large weights hash once."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    cache: dict[str, str] = {}
    hash_cache = cache_dir() / "file_hashes.json"
    if hash_cache.is_file():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            cache = json.loads(hash_cache.read_text())
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    cache[key] = digest.hexdigest()
    with contextlib.suppress(OSError):
        atomic_write_json(hash_cache, cache)
    return cache[key]


def weights_hash(folder: Path) -> str:
    """The model hash of a ``save_pretrained`` folder: SHA-256 over its weight files' names and hashes
    (free of transformers: the vLLM plugin checks fitted bundles against it)."""
    weights = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin", ".gguf"})
    if not weights:
        raise SparekitError(f"no weights (*.safetensors) in {folder}")
    digest = hashlib.sha256()
    for path in weights:
        digest.update(path.name.encode() + sha256_file(path).encode())
    return digest.hexdigest()
