"""Where each request's last prompt token sits in one vLLM step.

vLLM flattens a step's tokens: request ``i`` contributes ``scheduled[i]`` consecutive tokens, starting
right after the previous request's, continuing its sequence at position ``computed[i]``. The last prompt
token (position ``prompt_len - 1``, where sparekit reads and edits) is in this step exactly when
``computed < prompt_len <= computed + scheduled``. That covers continuous batching (prompt passes
mixed with decoding steps), chunked prefill (only the final chunk holds it) and prefix caching (a
cached prefix raises ``computed``; vLLM always recomputes the last prompt token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LastToken:
    """Request ``row`` of the step (its index in the batch) has its last prompt token at flat ``index``."""

    row: int
    index: int


def last_prompt_tokens(scheduled: Sequence[int], computed: Sequence[int],
                       prompt_lens: Sequence[int]) -> list[LastToken]:
    """The requests whose last prompt token this step computes, with its index in the flattened batch."""
    found, start = [], 0
    for row, (n, done, prompt) in enumerate(zip(scheduled, computed, prompt_lens, strict=True)):
        if done < prompt <= done + n:
            found.append(LastToken(row, start + prompt - 1 - done))
        start += n
    return found
