"""Every ```python block of README.md runs, in order, in one namespace (like a reader pasting them
into one session), so the examples cannot drift from the API again.

A block may be skipped only with a visible reason: an HTML comment on the line before it,
``<!-- readme-test: skip REASON -->``, which the rendered README hides but the source shows.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"(?:<!-- readme-test: skip (?P<reason>[^>]*?) -->\n)?```python\n(?P<code>.*?)```", re.S)


def readme_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(line number, code, skip reason or None)`` of each python block."""
    return [(text[:m.start("code")].count("\n") + 1, m.group("code"), m.group("reason")) for m in _BLOCK.finditer(text)]


def test_block_parser_sees_skips_and_line_numbers():
    text = "intro\n```python\na = 1\n```\n<!-- readme-test: skip needs a GPU -->\n```python\nb = 2\n```\n```bash\nls\n```\n"
    assert readme_blocks(text) == [(3, "a = 1\n", None), (7, "b = 2\n", "needs a GPU")]


@pytest.mark.slow
def test_every_readme_python_block_runs(tmp_path, monkeypatch, default_lm):
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 2
    import sparekit

    monkeypatch.chdir(tmp_path)  # blocks may write files (spare.save)
    monkeypatch.setattr(sparekit, "load_model", lambda *a, **k: default_lm)  # the session's copy: same model
    namespace: dict = {"__name__": "__readme__"}
    for line, code, reason in blocks:
        if reason is not None:
            assert reason.strip(), f"README.md:{line}: a skipped block must say why"
            continue
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as exc:  # name the block, not just the exception
            pytest.fail(f"README.md python block at line {line} fails: {type(exc).__name__}: {exc}")
