"""What the unchunked engine answered (``test_vllm_engine.py``), for ``test_vllm_chunked.py`` to compare with
when both run in one session (``scripts/test_vllm.sh``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def observed() -> dict:
    """``setting -> [token ids per prompt]`` and ``"detect" -> [reading per prompt]`` from the unchunked engine."""
    return {}
