"""Sharded, resumable activation store: capture once, stream back many times.

:func:`capture_activations` runs a model over texts through the shared
:class:`~sparekit.hooks.Hooks`, stops the forward pass after the deepest requested
site, and writes one safetensors shard per chunk of rows (all sites of that chunk in
the same file) plus a ``manifest.json``. Memory stays bounded by one chunk whatever
the corpus size. Each shard is written atomically and recorded in the manifest only
afterwards, so rerunning the same call after an interruption skips finished shards.

Under a launcher (``torchrun --nproc-per-node N -m sparekit capture …``, or any initialised
torch.distributed group) rank ``r`` captures the shards ``r, r + N, …`` and records them in
``progress.rank<r>.json``; rank 0 writes the manifest's configuration first and merges the
records into it at the end. Shard boundaries do not depend on the number of ranks, so the
store equals a one-process capture, and a rerun with any number of ranks skips every shard
some rank recorded.

Shard keys: one ``[rows, d]`` tensor per site (``"resid.6"``), and per row
``prompt_index`` (index into the manifest's ``ids``), ``token_id`` and ``position``
(token position inside its text, padding excluded).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from sparekit.artifacts import check_header, header
from sparekit.errors import SparekitError
from sparekit.evaluation.generation import batches, padded_positions
from sparekit.hooks import Hooks, Site
from sparekit.models.loading import LoadedModel
from sparekit.models.placement import input_device
from sparekit.utils.distributed import barrier, rank_and_world
from sparekit.utils.io import atomic_path, atomic_write_json, read_json
from sparekit.utils.rundir import RunDir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_RANK_RECORD = "progress.rank"  # + "<rank>.json": one rank's finished shards during a data-parallel capture
STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Manifest keys that must agree for a rerun to resume into an existing store.
_RESUME_KEYS = ("model_hash", "sites", "dtype", "positions", "skip_first_token", "max_length", "shard_rows",
                "n_texts", "texts_sha256", "ids")


def _dtype_name(dtype: torch.dtype | str) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in STORE_DTYPES:
        raise SparekitError(f"unsupported store dtype {dtype!r}", f"use one of: {', '.join(STORE_DTYPES)}")
    return name


def _texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()


def _chunks(lengths: Iterator[tuple[int, list[int]]], positions: str, skip_first: bool, shard_rows: int):
    """Group consecutive ``(index, token_ids)`` into chunks of about ``shard_rows`` rows.

    A chunk ends at a text boundary once it holds ``shard_rows`` rows, so shard
    boundaries depend only on the inputs and a rerun finds the same shards.
    """
    chunk: list[tuple[int, list[int]]] = []
    rows = 0
    for index, ids in lengths:
        chunk.append((index, ids))
        rows += 1 if positions == "last" else max(len(ids) - int(skip_first), 0)
        if rows >= shard_rows:
            yield chunk
            chunk, rows = [], 0
    if chunk:
        yield chunk


def _run_chunk(lm: LoadedModel, chunk, sites: Sequence[Site], positions: str, skip_first: bool,
               dtype: torch.dtype, batch_size: int, bar: tqdm) -> dict[str, torch.Tensor]:
    """Forward one chunk in length-sorted batches; rows come back in text order."""
    order = sorted(range(len(chunk)), key=lambda i: -len(chunk[i][1]))
    per_text: list[dict[str, torch.Tensor] | None] = [None] * len(chunk)
    device = input_device(lm)
    for batch_idx in batches(order, batch_size):
        enc = lm.tokenizer.pad({"input_ids": [chunk[i][1] for i in batch_idx]}, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        enc["position_ids"] = padded_positions(enc["attention_mask"])
        hooks = Hooks(lm)
        for site in sites:
            hooks.capture(site, positions=positions, dtype=dtype)
        hooks.stop_after_captures()
        with torch.inference_mode(), hooks:
            lm.model(**enc, use_cache=False)
        mask = enc["attention_mask"].bool()
        for row, i in enumerate(batch_idx):
            index, ids = chunk[i]
            token_ids = torch.tensor(ids, dtype=torch.long)
            if positions == "last":
                keep = slice(len(ids) - 1, len(ids))
                out = {str(s): hooks[s][row:row + 1].cpu() for s in sites}
            else:
                keep = slice(int(skip_first), len(ids))
                real = mask[row]
                out = {str(s): hooks[s][row][real][keep].cpu() for s in sites}
            n = len(range(len(ids))[keep])
            out["prompt_index"] = torch.full((n,), index, dtype=torch.long)
            out["token_id"] = token_ids[keep]
            out["position"] = torch.arange(len(ids))[keep]
            per_text[i] = out
        bar.update(len(batch_idx))
    keys = per_text[0].keys()
    return {k: torch.cat([t[k] for t in per_text]).contiguous() for k in keys}


def _rank_records(out_dir: Path) -> list[dict]:
    """Shards the ranks of a data-parallel capture recorded (any world size: a rerun may use another)."""
    return [shard for path in sorted(out_dir.glob(f"{_RANK_RECORD}*.json")) for shard in read_json(path)["shards"]]


def _finish(out_dir: Path, manifest: dict, n_chunks: int) -> None:
    """Merge the ranks' records into the one manifest, in shard order, and mark it complete."""
    records = [read_json(path) for path in sorted(out_dir.glob(f"{_RANK_RECORD}*.json"))]
    by_file = {shard["file"]: shard for shard in [*manifest["shards"], *(s for r in records for s in r["shards"])]}
    if len(by_file) != n_chunks:
        raise SparekitError(f"{out_dir}: {len(by_file)} of {n_chunks} shards recorded", "rerun the same command")
    manifest["shards"] = [by_file[name] for name in sorted(by_file)]
    manifest["rows"] = sum(shard["rows"] for shard in manifest["shards"])
    manifest["d"] = manifest["d"] or next(r["d"] for r in records if r["d"])
    manifest["complete"] = True
    atomic_write_json(out_dir / MANIFEST, manifest)
    for path in out_dir.glob(f"{_RANK_RECORD}*.json"):
        path.unlink()


def capture_activations(
    lm: LoadedModel,
    texts: Sequence[str],
    sites: Sequence[Site],
    out_dir: str | Path,
    *,
    positions: str = "last",
    skip_first_token: bool = False,
    ids: Sequence[str] | None = None,
    dtype: torch.dtype | str = torch.float16,
    batch_size: int = 8,
    max_length: int | None = 256,
    shard_rows: int = 4096,
    progress: bool = True,
) -> ActivationStore:
    """Capture ``sites`` for every text into a sharded store at ``out_dir`` and return it.

    ``positions="last"``: one row per text (its last token, the probing feature).
    ``positions="all"``: one row per real token (padding dropped; ``skip_first_token``
    also drops each text's first token, usually BOS, whose huge norm dominates SAE losses).
    Texts longer than ``max_length`` tokens lose their end (``None``: no truncation).
    Rerunning with the same arguments resumes, skipping finished shards. Inside a
    torch.distributed process group the ranks split the shards (module docstring).
    """
    sites, ids = _checked_request(lm, texts, sites, ids, positions, shard_rows, batch_size)
    out_dir = Path(out_dir)
    manifest = {
        **header("activation_store", FORMAT_VERSION), "model": lm.info.name, "model_hash": lm.info.model_hash,
        "sites": [str(s) for s in sites],
        "d": {}, "dtype": _dtype_name(dtype), "positions": positions, "skip_first_token": bool(skip_first_token),
        "max_length": max_length, "shard_rows": shard_rows, "n_texts": len(texts),
        "texts_sha256": _texts_digest(texts), "ids": ids, "shards": [], "rows": 0, "complete": False,
    }
    rank, world = rank_and_world()
    if world > len(texts):
        raise SparekitError(f"{world} ranks for {len(texts)} texts: some ranks would have nothing to capture",
                            f"launch at most {len(texts)} processes")
    run = RunDir(out_dir, "capture", config_file=MANIFEST)
    with run.running():  # two writers would interleave shards and manifests
        if run.stored_config() is not None:
            ActivationStore(out_dir)  # an unreadable or foreign manifest is refused as such
        # the manifest records the config before any shard, so a rerun after a crash checks it
        manifest = run.prepare(manifest, keys=_RESUME_KEYS, update=False, environment=False)
        barrier()
        if manifest["complete"]:
            return ActivationStore(out_dir)
        chunks = list(_chunks(_tokenized(lm, texts, max_length), positions, skip_first_token, shard_rows))
        if world > len(chunks):
            log.warning("%d ranks share %d shards: %d rank(s) stay idle (a smaller shard_rows splits the work finer)",
                        world, len(chunks), world - len(chunks))
        _write_shards(lm, out_dir, manifest, chunks, sites, positions, skip_first_token, batch_size, progress)
        barrier()
        if rank == 0:
            _finish(out_dir, manifest, len(chunks))
        barrier()
        return ActivationStore(out_dir)


def _checked_request(lm: LoadedModel, texts: Sequence[str], sites: Sequence[Site], ids: Sequence[str] | None,
                     positions: str, shard_rows: int, batch_size: int) -> tuple[list[Site], list[str]]:
    """The sites in depth order and one id per text, or one error line before any work."""
    if positions not in ("last", "all"):
        raise SparekitError(f"bad positions {positions!r}", "use 'last' or 'all'")
    sites = sorted(set(sites), key=lambda s: s.depth)
    if not sites:
        raise SparekitError("no sites to capture", "pass at least one Site, e.g. Site(6)")
    for site in sites:
        lm.info.check_layer(site.layer)
    if not texts:
        raise SparekitError("no texts to capture")
    ids = [str(i) for i in range(len(texts))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(texts):
        raise SparekitError(f"{len(ids)} ids for {len(texts)} texts", "pass one id per text")
    if shard_rows < 1 or batch_size < 1:
        raise SparekitError("shard_rows and batch_size must be positive")
    return sites, ids


def _tokenized(lm: LoadedModel, texts: Sequence[str], max_length: int | None) -> Iterator[tuple[int, list[int]]]:
    """Each text's index and token ids, tokenized 256 texts at a time."""
    for start in range(0, len(texts), 256):
        block = list(texts[start:start + 256])
        enc = lm.tokenizer(block, truncation=max_length is not None, max_length=max_length)
        yield from enumerate(enc["input_ids"], start)


def _write_shards(lm: LoadedModel, out_dir: Path, manifest: dict, chunks: list, sites: list[Site], positions: str,
                  skip_first_token: bool, batch_size: int, progress: bool) -> None:
    """This rank's shards not yet on disk, each recorded once written: in the manifest (one process) or in
    the rank's own record, kept across reruns and merged into the manifest by :func:`_finish`."""
    rank, world = rank_and_world()
    done = {shard["file"] for shard in [*manifest["shards"], *_rank_records(out_dir)]}
    store_dtype = STORE_DTYPES[manifest["dtype"]]
    own_record = out_dir / f"{_RANK_RECORD}{rank}.json"
    record = read_json(own_record) if world > 1 and own_record.is_file() else {"d": {}, "shards": []}
    mine = [(number, chunk) for number, chunk in enumerate(chunks) if number % world == rank]
    bar = tqdm(total=sum(len(chunk) for _, chunk in mine), desc="capture", unit="text",
               disable=not progress or rank != 0)
    for number, chunk in mine:
        name = f"shard-{number:05d}.safetensors"
        if name in done:
            bar.update(len(chunk))
            continue
        tensors = _run_chunk(lm, chunk, sites, positions, skip_first_token, store_dtype, batch_size, bar)
        with atomic_path(out_dir / name) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        shard = {"file": name, "rows": int(tensors["prompt_index"].shape[0]), "prompt_start": chunk[0][0],
                 "prompt_end": chunk[-1][0] + 1}
        d = {str(s): int(tensors[str(s)].shape[-1]) for s in sites}
        if world == 1:
            manifest["d"] = d
            manifest["shards"].append(shard)
            manifest["rows"] += shard["rows"]
            atomic_write_json(out_dir / MANIFEST, manifest)
        else:
            record["d"] = d
            record["shards"].append(shard)
            atomic_write_json(own_record, record)
    bar.close()


class ActivationStore:
    """Read a store written by :func:`capture_activations`; every read returns float32."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            raise SparekitError(f"no activation store at {self.path} (missing {MANIFEST})",
                                "write one with capture_activations or `sparekit capture`")
        manifest = read_json(self.path / MANIFEST)
        check_header(manifest, self.path / MANIFEST, "activation_store", (FORMAT_VERSION,))
        try:
            self.sites = [Site.parse(s) for s in manifest["sites"]]
            self._offsets = [0]
            for shard in manifest["shards"]:
                self._offsets.append(self._offsets[-1] + int(shard["rows"]))
        except (KeyError, TypeError) as exc:
            raise SparekitError(f"{self.path / MANIFEST} is corrupt (missing {exc})", "capture again") from None
        self.manifest = manifest
        self._cache: tuple[int, str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self._offsets[-1]

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, rows={len(self)}, sites={[str(s) for s in self.sites]})"

    @property
    def ids(self) -> list[str]:
        return self.manifest["ids"]

    def _key(self, site: Site | str) -> str:
        key = str(site)
        if key not in self.manifest["sites"] and key not in ("prompt_index", "token_id", "position"):
            raise SparekitError(f"site {key} is not in this store", f"stored: {', '.join(self.manifest['sites'])}")
        return key

    def _read(self, shard: int, key: str) -> torch.Tensor:
        path = self.path / self.manifest["shards"][shard]["file"]
        if not path.is_file():
            raise SparekitError(f"missing shard {path}", "rerun the capture to rewrite it")
        with safe_open(str(path), framework="pt") as fh:
            tensor = fh.get_tensor(key)
        return tensor.float() if tensor.is_floating_point() else tensor

    def load(self, site: Site | str) -> torch.Tensor:
        """All rows of ``site`` as float32 ``[rows, d]`` (or a per-row key such as ``"prompt_index"``)."""
        key = self._key(site)
        return torch.cat([self._read(i, key) for i in range(len(self.manifest["shards"]))])

    def iter_batches(self, site: Site | str, batch_size: int, shuffle: bool = False, seed: int = 0
                     ) -> Iterator[torch.Tensor]:
        """Stream float32 ``[batch, d]`` batches, one shard in memory at a time.

        With ``shuffle`` the shard order and the rows inside each shard are permuted
        (seeded); only the final batch may be smaller than ``batch_size``.
        """
        key = self._key(site)
        generator = torch.Generator().manual_seed(seed)
        n_shards = len(self.manifest["shards"])
        order = torch.randperm(n_shards, generator=generator).tolist() if shuffle else range(n_shards)
        carry = None
        for shard in order:
            rows = self._read(shard, key)
            if shuffle:
                rows = rows[torch.randperm(rows.shape[0], generator=generator)]
            if carry is not None:
                rows = torch.cat([carry, rows])
            full = rows.shape[0] - rows.shape[0] % batch_size
            yield from rows[:full].split(batch_size)
            carry = rows[full:] if full < rows.shape[0] else None
        if carry is not None:
            yield carry

    def as_torch_dataset(self, site: Site | str) -> torch.utils.data.Dataset:
        """A map-style dataset of float32 ``[d]`` rows (keeps one shard in memory)."""
        return _StoreDataset(self, self._key(site))

    def _row(self, key: str, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = bisect.bisect_right(self._offsets, index) - 1
        if self._cache is None or self._cache[:2] != (shard, key):
            self._cache = (shard, key, self._read(shard, key))
        return self._cache[2][index - self._offsets[shard]]


class _StoreDataset(torch.utils.data.Dataset):
    def __init__(self, store: ActivationStore, key: str):
        self.store, self.key = store, key

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.store._row(self.key, index)
