"""The scheduler: collect the requests that arrive together, start them as one batch, let later ones join it.

One worker thread owns the model. It waits for a first job, then collects more until
``max_batch`` are waiting or ``max_wait_s`` has passed since the later of the first
job's arrival and the end of the previous batch (so the clients that batch just
answered can send their next request and join, instead of the clients splitting
into cohorts that alternate), and starts them as one batch. While it decodes, an engine batching
``continuous`` asks at every step for the jobs waiting then (:meth:`Batcher._join`: once at least as many
wait as rows run, up to ``max_batch`` rows in all): rows leave the batch when they finish and newcomers take
their place (:mod:`sparekit.serve.engine`).
"""

from __future__ import annotations

import collections
import threading
import time

from sparekit.serve.engine import Engine, Job
from sparekit.serve.metrics import Metrics


class QueueFull(Exception):
    """The waiting queue holds ``max_queue`` jobs already."""


class Batcher:
    def __init__(self, engine: Engine, metrics: Metrics, max_batch: int = 16, max_wait_s: float = 0.01,
                 max_queue: int = 256):
        self.engine, self.metrics = engine, metrics
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self._pending: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._last_end = 0.0
        self._thread = threading.Thread(target=self._loop, name="sparekit-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Finish the running batch and the queued jobs, then stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout)

    @property
    def depth(self) -> int:
        """Prompts waiting for a batch."""
        return len(self._pending)

    def submit(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` together (all or none), or raise :class:`QueueFull`."""
        with self._cv:
            if len(self._pending) + len(jobs) > self.max_queue:
                raise QueueFull
            self._pending.extend(jobs)
            self.metrics.queue_depth.set(len(self._pending))
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """Free a job's place: drop it from the queue, or stop its row at the next decoding step."""
        job.cancelled.set()
        with self._cv:
            try:
                self._pending.remove(job)
            except ValueError:
                return
            self.metrics.queue_depth.set(len(self._pending))

    def _take(self) -> list[Job] | None:
        with self._cv:
            while not self._pending:
                if self._closed:
                    return None
                self._cv.wait()
            deadline = max(self._pending[0].arrived, self._last_end) + self.max_wait_s
            while len(self._pending) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._cv.wait(left)
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            self.metrics.queue_depth.set(len(self._pending))
        return [job for job in batch if not job.cancelled.is_set()]

    def _join(self, running: int) -> list[Job]:
        """The jobs waiting now, to join a running batch of ``running`` rows (up to ``max_batch`` in all), once
        at least as many wait as rows run: their prompt pass stalls every running row for about as long whether
        it holds one row or eight, so one or two rows joining at every step cost more than they gained
        (BENCHMARKS.md, "Continuous batching")."""
        with self._cv:
            if len(self._pending) < running:
                return []
            jobs = [self._pending.popleft() for _ in range(min(self.max_batch - running, len(self._pending)))]
            self.metrics.queue_depth.set(len(self._pending))
        jobs = [job for job in jobs if not job.cancelled.is_set()]
        if jobs:
            self.metrics.batch_size.observe(len(jobs))
        return jobs

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            if not batch:
                continue
            start = time.perf_counter()
            self.metrics.batch_size.observe(len(batch))  # before the rows answer: a client reading /metrics sees it
            self.engine.run(batch, self._join, self.metrics.step_rows.observe)
            self.metrics.batch_seconds.observe(time.perf_counter() - start)
            self._last_end = time.monotonic()
