"""Say what a slow step is doing, so a person never watches a silent terminal.

A step that usually takes a moment stays quiet; one still running after ``after`` seconds
prints what it is doing to stderr, then how long it took. Nothing is printed for fast steps, and
:func:`announce_when_slow` speaks only to a terminal, so scripts, logs and tests that read stderr
for one error line see no progress lines.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def notice_when_slow(message: str, after: float = 2.0) -> Iterator[None]:
    """Print ``message…`` to stderr if the block still runs after ``after`` seconds, then (on success) its duration."""
    start, lock, said = time.monotonic(), threading.Lock(), []

    def say() -> None:
        with lock:
            said.append(True)
            print(f"{message}…", file=sys.stderr, flush=True)

    timer = threading.Timer(after, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    with lock:  # after an error, its own message follows: no "done"
        if said:
            print(f"  done in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


def announce_when_slow(describe: Callable[..., str], after: float = 2.0) -> Callable[[F], F]:
    """Decorator: :func:`notice_when_slow` around each call made from a terminal, ``describe(*args, **kwargs)``
    saying what it does."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not sys.stderr.isatty():
                return fn(*args, **kwargs)
            with notice_when_slow(describe(*args, **kwargs), after):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
