"""Every example runs as written, so none can drift from the code again.

- Every ```python block of README.md runs, in order, in one namespace (like a reader pasting them into
  one session).
- Every command of README's ```bash blocks that invokes sparekit, and every example command in a
  ``--help`` text (``sparekit …``, ``torchrun … -m sparekit …``, ``curl`` against ``sparekit serve``), runs
  in a shell exactly as written: ``sparekit`` and ``python3`` are this interpreter, the working directory
  a fresh temporary one. Examples without a model run always; those that load one are marked slow; the
  ``curl`` and ``openai`` examples run against a live server on the real model, at its own port.

An example is left out only with a visible reason: in README an HTML comment on the line before the
block, ``<!-- readme-test: skip REASON -->`` (the rendered README hides it), and for a command
:data:`NOT_RUN` below; both reasons show as the test's skip reason. A key of :data:`NOT_RUN` that no
longer names an example fails, so the table cannot rot.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"(?:<!-- readme-test: skip (?P<reason>[^>]*?) -->\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```",
                    re.S)
#: a command that invokes sparekit (or calls its server)
_INVOKES = re.compile(r"(^|&&\s*)(sparekit\s|python3 -m sparekit\s|torchrun\s.*-m sparekit\s|curl\s)")
#: where a command starts in a help text
_STARTS = re.compile(r"^(Example:\s*)?(?=(sparekit|torchrun|curl|python3 -m sparekit)\s)")

#: example command (prefix) -> why the suite does not run it
NOT_RUN = {
    "bash scripts/setup.sh": "installs packages; the demo itself runs in tests/test_cli.py::test_demo_runs_on_shipped_artefacts",
    "sparekit serve --port 8000": "a server that runs until stopped; the curl and openai examples run against a live one "
                                  "here (test_server_examples_answer_as_written)",
    "torchrun ": "a data-parallel job over NQ-Swap; tests/test_distributed.py runs the same launchers on small data",
    "sparekit eval --dataset nqswap --limit 300": "300 items x 2 seeds x 3 conditions of generation: a long job on CPU",
    "sparekit probe --dataset nqswap --limit 600": "600 items x every layer x 3 seeds: a long job on CPU",
    "sparekit capture --dataset nqswap --limit 500": "captures 500 NQ-Swap prompts at 5 layers: a long job on CPU",
    "sparekit capture --texts corpus.txt": "needs your own corpus.txt",
    "sparekit bench steer --dataset default": "a full steering benchmark (hours on CPU; BENCHMARKS.md)",
    "sparekit bench steer --split-by relation": "a full leave-one-relation-out benchmark (hours on CPU; BENCHMARKS.md)",
    "sparekit bench steer --protocol paper": "the paper protocol's full benchmark (hours on CPU; BENCHMARKS.md)",
    "sparekit kv bench": "passkey, needle and perplexity for every method and ratio: a long job on CPU",
}
#: commands that load the model (tens of seconds each): marked slow
LOADS_A_MODEL = ("sparekit steer ",)


@dataclass(frozen=True)
class Example:
    """One example command: where it is written, the command, and the output its comment promises."""

    where: str
    command: str
    expected: str | None = None


def readme_blocks(text: str, lang: str = "python") -> list[tuple[int, str, str | None]]:
    """``(line number, code, skip reason or None)`` of each block in ``lang``."""
    return [(text[:m.start("code")].count("\n") + 1, m.group("code"), m.group("reason"))
            for m in _BLOCK.finditer(text) if m.group("lang") == lang]


def shell_commands(text: str, prose: bool = False) -> list[tuple[str, str | None]]:
    """``(command, expected)`` of each sparekit command in shell text: lines joined at a trailing backslash
    or an open quote, a trailing ``# comment`` dropped, and a comment line right after a command read as
    the output it promises. ``prose``: text around the commands (a help text), where a command starts
    only with ``sparekit``, ``torchrun``, ``curl`` or ``python3 -m sparekit`` (after an optional "Example:")."""
    found: list[tuple[str, str | None]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and line.startswith("#"):
            if found and found[-1][1] is None:
                found[-1] = (found[-1][0], line[1:].strip())
            continue
        if not pending and prose:
            if not _STARTS.match(line):
                continue
            line = _STARTS.sub("", line, count=1) if line.startswith("Example:") else line
        pending = f"{pending} {line}".strip() if pending else line
        if pending.endswith("\\") or not _complete(pending):
            pending = pending.rstrip("\\").rstrip()
            continue
        command, pending = _drop_comment(pending), ""
        if _INVOKES.search(command):
            found.append((command, None))
    return found


def _complete(command: str) -> bool:
    try:
        shlex.split(command, comments=True)
    except ValueError:  # an open quote: the command goes on
        return False
    return True


def _drop_comment(command: str) -> str:
    """The command without a trailing ``# comment`` (outside quotes)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=False)
    lexer.whitespace_split, lexer.commenters = True, "#"
    tokens = list(lexer)
    cut = command.find(" #")
    while cut != -1 and len(list(shlex.split(command[:cut], comments=True))) != len(tokens):
        cut = command.find(" #", cut + 1)
    return (command[:cut] if cut != -1 else command).rstrip()


def readme_examples() -> list[tuple[Example, str | None]]:
    """README's shell examples, each with its block's skip reason."""
    examples = []
    for line, code, reason in readme_blocks(README.read_text(encoding="utf-8"), "bash"):
        examples += [(Example(f"README.md:{line}", command, expected), reason)
                     for command, expected in shell_commands(code)]
    return examples


def help_examples() -> list[Example]:
    """The example commands of every ``--help`` text."""
    from sparekit.cli.main import COMMANDS

    def walk(path: str, command: click.Command):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(f"{path} {name}", sub)

    examples = []
    for name, (module, attr, _) in COMMANDS.items():
        for path, command in walk(f"sparekit {name}", getattr(importlib.import_module(module), attr)):
            examples += [Example(f"`{path} --help`", c, e) for c, e in shell_commands(command.help or "", prose=True)]
    return examples


def _not_run(example: Example) -> str | None:
    return next((reason for prefix, reason in NOT_RUN.items() if example.command.startswith(prefix)), None)


def _cases() -> list:
    """One case per README block or help text: its commands run in order in one directory (the README's
    second ``--config`` command reads what the first wrote); skipped, with the reasons, when none can run."""
    by_where: dict[str, list[tuple[Example, str | None]]] = {}
    for example, block_reason in [*readme_examples(), *((e, None) for e in help_examples())]:
        if not example.command.startswith("curl "):  # those run in test_server_examples_answer_as_written
            by_where.setdefault(example.where, []).append((example, block_reason or _not_run(example)))
    cases = []
    for where, items in by_where.items():
        runnable = [example for example, reason in items if reason is None]
        marks = [] if runnable else [pytest.mark.skip(reason="; ".join(dict.fromkeys(r for _, r in items if r)))]
        if any(example.command.startswith(LOADS_A_MODEL) for example in runnable):
            marks.append(pytest.mark.slow)
        cases.append(pytest.param(runnable, marks=marks, id=where))
    return cases


def run_shell(command: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``command`` in bash, with ``sparekit`` and ``python3`` this interpreter on this source tree."""
    import sparekit

    bin_dir = cwd / ".bin"
    bin_dir.mkdir(exist_ok=True)
    for name, argv in (("sparekit", f"{shlex.quote(sys.executable)} -m sparekit"), ("python3", shlex.quote(sys.executable))):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {argv} "$@"\n')
        (bin_dir / name).chmod(0o755)
    src = str(Path(sparekit.__file__).resolve().parents[1])
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_block_parser_sees_skips_and_line_numbers():
    text = "intro\n```python\na = 1\n```\n<!-- readme-test: skip needs a GPU -->\n```python\nb = 2\n```\n```bash\nls\n```\n"
    assert readme_blocks(text) == [(3, "a = 1\n", None), (7, "b = 2\n", "needs a GPU")]
    assert readme_blocks(text, "bash") == [(10, "ls\n", None)]


def test_shell_parser_joins_lines_drops_comments_and_reads_promised_output():
    text = ("ls -l\nsparekit info   # versions\ncurl -s x -H 'A: b' \\\n  -d '{\"a\": 1,\n   \"b\": \"# no\"}'\n"
            "# {\"answer\": 1}\nbash s.sh && python3 -m sparekit demo  # all\n")
    assert shell_commands(text) == [
        ("sparekit info", None), ("curl -s x -H 'A: b' -d '{\"a\": 1, \"b\": \"# no\"}'", '{"answer": 1}'),
        ("bash s.sh && python3 -m sparekit demo", None)]
    help_text = "Fits what it's told (an apostrophe).\n\nExample: sparekit eval --json\n  llama-cli -m m.gguf\n"
    assert shell_commands(help_text, prose=True) == [("sparekit eval --json", None)]


def test_every_example_is_found_and_every_exception_still_names_one():
    examples = [e for e, _ in readme_examples()] + help_examples()
    commands = [e.command for e in examples]
    assert sum(c.startswith("curl ") for c in commands) == 2  # README's and `serve --help`'s
    assert "sparekit bench steer --config steer.json --seeds 42 --dry-run" in commands
    stale = [prefix for prefix in NOT_RUN if not any(c.startswith(prefix) for c in commands)]
    assert not stale, f"NOT_RUN names no example any more: {stale}"


@pytest.mark.parametrize("examples", _cases())
def test_examples_run_as_written(examples: list[Example], tmp_path):
    for example in examples:
        proc = run_shell(example.command, tmp_path)
        assert proc.returncode == 0, f"{example.where}: `{example.command}` exits {proc.returncode}:\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_server_examples_answer_as_written(tmp_path, default_lm):
    """The curl examples (README's and ``serve --help``'s) and README's openai client, against a live server on
    the real model; the only change is the address (the server's own free port instead of 8000)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("openai")
    from sparekit.serve import Limits, build_engine, serve_in_thread

    curls = [e for e in [e for e, _ in readme_examples()] + help_examples() if e.command.startswith("curl ")]
    (_, client_block, _), = [b for b in readme_blocks(README.read_text(encoding="utf-8")) if "OpenAI(" in b[1]]
    with serve_in_thread(build_engine(default_lm), Limits()) as (_, url):
        address = url.removeprefix("http://")
        for example in curls:
            proc = run_shell(example.command.replace("localhost:8000", address), tmp_path, timeout=120)
            assert proc.returncode == 0, proc.stderr
            reply = json.loads(proc.stdout)
            assert reply["answer"] and reply["sparekit"]["steered"] is True, (example.where, reply)
            if example.expected:  # README's comment shows the reply
                assert json.loads(example.expected.split(", \"sparekit\"")[0] + "}")["answer"] == reply["answer"]
        namespace: dict = {}
        exec(compile(client_block.replace("127.0.0.1:8000", address), "README.md:openai", "exec"), namespace)
    assert namespace["r"].choices[0].text.strip() == "Benin" and namespace["r"].sparekit["steered"] is True


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
