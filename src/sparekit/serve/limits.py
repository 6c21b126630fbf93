"""Every bound ``sparekit serve`` enforces, one field each; the command's options are made from these fields.

Apart from the app so that ``sparekit serve --help`` can list them without the ``serve``
extra (FastAPI) installed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparekit.utils.config import option


@dataclass(frozen=True)
class Limits:
    """Every bound the server enforces; each is a ``sparekit serve`` option of the same name."""

    max_body_bytes: int = option(1_000_000, min=1, help="Largest request body in bytes (413 above).")
    max_prompt_tokens: int = option(2048, min=1, help="Largest prompt in tokens (400 above).")
    max_tokens: int = option(256, min=1, help="Largest max_tokens a request may ask for (400 above).")
    max_queue: int = option(256, min=1, help="Prompts waiting (429 above).")
    max_streams: int = option(32, min=1, help="Streaming responses open at once (429 above).")
    max_batch: int = option(16, min=1, max=256, help="Most prompts in one batched generate.")
    batch_wait_ms: float = option(10.0, min=0, max=1000,
                                  help="How long the first request of a batch waits for others to join.")
    max_strength: float = option(16.0, min=0, help="Largest steering strength a request may ask for (400 above).")
    drain_timeout_s: float = option(30.0, min=0, flag="--drain-timeout",
                                    help="On SIGTERM, seconds in-flight requests get to finish (new ones get 503).")
