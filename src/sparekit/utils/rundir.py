"""The one run-directory rule every long job follows.

A run directory holds the job's resolved configuration (written atomically before any
work), ``environment.json``, the job's own resumable files, and a ``done`` marker once
the job completes. Rerunning the same configuration resumes into it; a different one is
refused with one line naming the differing keys. :func:`run_lock` keeps a second
process out while a job runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sparekit.errors import SparekitError
from sparekit.utils.io import atomic_write_json, ensure_dir, read_json, run_lock

DONE = "done"
EXPERIMENT = "experiment.json"
_SHOWN = 32  # characters of a value shown in a refusal
_MISSING = object()


def run_path(root: str | os.PathLike, *parts: str, config: dict | None = None) -> Path:
    """``<root>/<part>-<part>[-<hash of config>]``: a default run directory, the same for the same config."""
    name = "-".join(parts)
    if config is not None:
        name += "-" + hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return Path(root) / name


def _short(value: Any) -> str:
    text = "missing" if value is _MISSING else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= _SHOWN else text[:_SHOWN - 1] + "…"


def check_same_config(stored: dict, config: dict, subject: str, *, keys: Iterable[str] | None = None,
                      ignore: Iterable[str] = (), differs: str = "a different configuration",
                      hint: str = "choose another --out or delete it") -> None:
    """Refuse (one line) when ``stored`` and ``config`` differ on ``keys`` (default: every key not in ``ignore``).

    The message names each differing key with its old → new value, shortened.
    """
    skip = set(ignore)
    names = list(keys) if keys is not None else [k for k in dict.fromkeys([*stored, *config]) if k not in skip]
    diffs = [f"{k} differs ({_short(stored.get(k, _MISSING))} → {_short(config.get(k, _MISSING))})"
             for k in names if stored.get(k, _MISSING) != config.get(k, _MISSING)]
    if diffs:
        raise SparekitError(f"{subject} with {differs}: {'; '.join(diffs)}", hint)


class RunDir:
    """One job's run directory: config record and refusal, environment, lock, ``done`` marker.

    ``config_file`` is where the resolved config lives (``config.json``; an activation store
    keeps it in its ``manifest.json``). Under a data-parallel launcher every rank checks,
    rank 0 writes.
    """

    def __init__(self, path: str | os.PathLike, what: str = "run", config_file: str = "config.json"):
        self.path, self.what, self.config_file = Path(path), what, config_file

    @property
    def done(self) -> bool:
        """Whether the job in this directory completed (its ``done`` marker is present)."""
        return (self.path / DONE).is_file()

    def stored_config(self) -> dict | None:
        path = self.path / self.config_file
        return read_json(path) if path.is_file() else None

    def prepare(self, config: dict, *, keys: Iterable[str] | None = None, ignore: Iterable[str] = (),
                update: bool = True, environment: bool = True, experiment: dict | None = None) -> dict:
        """Check ``config`` against the stored one (refusing on a difference), record it, return the live config.

        ``keys``/``ignore``: which keys must agree (default all). ``update``: write ``config`` over a
        matching stored one (it may differ in ignored keys); otherwise the stored one is kept and
        returned (it may carry the job's progress). ``experiment``: the resolved command configuration
        (``sparekit.utils.config.config_dict``), kept as ``experiment.json`` (``--config`` reads it back).
        """
        # deliberately lazy: both import torch, which `sparekit info` and `--help` must not pay for
        from sparekit.utils.distributed import rank_and_world
        from sparekit.utils.env import environment_info  # lazy, as above

        config = json.loads(json.dumps(config, default=str))  # what the file will hold: tuples as lists
        stored = self.stored_config()
        if stored is not None:
            article = "an" if self.what[:1].lower() in "aeiou" else "a"
            check_same_config(stored, config, f"{self.path} holds {article} {self.what}", keys=keys, ignore=ignore,
                              hint=f"choose another --out or delete {self.path}")
        live = config if stored is None or update else stored
        if rank_and_world()[0] == 0:
            ensure_dir(self.path)
            if live is config:
                atomic_write_json(self.path / self.config_file, config)
            if environment:
                atomic_write_json(self.path / "environment.json", environment_info())
            if experiment is not None:
                self.record_experiment(experiment)
        return live

    def record_experiment(self, experiment: dict) -> None:
        """Keep the resolved command configuration as ``experiment.json`` (``--config`` reads it back)."""
        atomic_write_json(self.path / EXPERIMENT, experiment)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Hold the lock while the job runs; its ``done`` marker is cleared first and written if the body completes."""
        from sparekit.utils.distributed import rank_and_world  # deliberately lazy: it imports torch

        first = rank_and_world()[0] == 0
        with run_lock(self.path, self.what):
            if first:
                (self.path / DONE).unlink(missing_ok=True)
            yield
            if first:
                atomic_write_json(self.path / DONE, {"what": self.what,
                                                     "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The lock alone, for work that adds to a run without redoing it (no ``done`` change)."""
        return run_lock(self.path, self.what)

    @contextlib.contextmanager
    def session(self, config: dict, **prepare: Any) -> Iterator[dict]:
        """:meth:`running` after :meth:`prepare` with ``config``; yields the live config."""
        with self.running():
            yield self.prepare(config, **prepare)
