"""Start-up stays cheap: ``sparekit --help``, ``import sparekit`` and the first lines of ``info`` and
``demo`` must not import torch or transformers (seconds). Asserted on ``sys.modules`` in a fresh
interpreter, not on timings, so the test cannot flake on a loaded machine; the timings are in
BENCHMARKS.md (``benchmarks/bench_startup.py``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "numpy")


def heavy_modules_after(code: str) -> list[str]:
    """The heavy modules loaded once ``code`` has run in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("code", [
    "import sparekit",
    "import sparekit.utils, sparekit.models, sparekit.cli.common",
    "from sparekit.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    "from sparekit.cli.main import main\ntry:\n    main(['info', '--help'])\nexcept SystemExit:\n    pass",
    "from sparekit.cli.main import main\nfor c in ('demo', 'steer', 'generate', 'ls'):\n    main([c, '--help'])",
])
def test_light_entry_points_do_not_import_torch(code):
    assert heavy_modules_after(code) == []


def test_lazy_public_names_still_resolve():
    import sparekit

    assert sparekit.load_model.__name__ == "load_model" and sparekit.Site(3).layer == 3
    assert {"Hooks", "load", "load_model", "SparekitError"} <= set(dir(sparekit))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sparekit.nope  # noqa: B018


STOP_AT = """
class Stop(Exception):
    pass
def stop(*args, **kwargs):
    raise Stop
{patch}
from sparekit.cli.main import main
try:
    main({argv!r})
except Stop:
    pass
"""


@pytest.mark.parametrize("argv", [["info"], ["demo"]])
def test_first_line_comes_before_torch(argv):
    """The first line a command prints (stopped there) comes before torch is imported."""
    assert heavy_modules_after(STOP_AT.format(patch="import click\nclick.echo = stop", argv=argv)) == []


def test_the_startup_benchmark_prints_its_ratios():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_startup.py"), "--before", str(root / "src"),
                           "--rounds", "1", "--only=sparekit --help"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()
    assert "before/after" in header and row.startswith("sparekit --help") and row.endswith("x")


def test_a_slow_step_says_what_it_does_and_a_fast_one_stays_quiet(capsys):
    import time

    from sparekit.utils.progress import notice_when_slow

    with notice_when_slow("loading x", after=0.05):
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert err.startswith("loading x…\n  done in ") and err.endswith(" s\n")
    with notice_when_slow("loading y", after=5):
        pass
    with pytest.raises(ValueError), notice_when_slow("loading z", after=0.05):
        time.sleep(0.3)
        raise ValueError  # its own message follows: no "done"
    assert capsys.readouterr().err == "loading z…\n"


def test_the_model_load_notice_says_where_from(tmp_path, monkeypatch):
    from sparekit.models.loading import _load_notice

    monkeypatch.setenv("SPAREKIT_CACHE", str(tmp_path))
    assert _load_notice("default").startswith("assembling default (Gemma 3 270M) from its PyPI package")
    (tmp_path / "models" / "gemma-3-270m").mkdir(parents=True)
    (tmp_path / "models" / "gemma-3-270m" / "sparekit_source.json").write_text("{}")
    assert _load_notice("default", dtype="float32") == "loading default (Gemma 3 270M) from the cache"
    assert _load_notice(name_or_path="org/model") == "loading org/model"


def test_announcements_speak_to_a_terminal_only(capsys, monkeypatch):
    import time

    from sparekit.utils.progress import announce_when_slow

    slow = announce_when_slow(lambda seconds: f"waiting {seconds}", after=0.05)(time.sleep)
    slow(0.3)  # captured stderr is no terminal
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    slow(0.3)
    assert capsys.readouterr().err.startswith("waiting 0.3…\n  done in ")
