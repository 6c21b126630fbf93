"""Print the "Bad input: what each case prints" table of BENCHMARKS.md.

Every case of issue 17 is run as a user would, ``python3 -m sparekit …`` in a fresh
process on the default model, and the table shows the exit status and the line printed
on stderr (or stdout where the case now succeeds). Temporary paths are shown as ``$TMP``.

    PYTHONPATH=src python3 benchmarks/bad_inputs.py
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "saelens"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run(args: list[str], tmp: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "sparekit", *args], capture_output=True, text=True, env=ENV)
    return proc.returncode, _line(proc.stderr or proc.stdout, tmp)


def _line(text: str, tmp: Path) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and "Loading weights" not in ln]
    shown = " ⏎ ".join(lines[-2:]) if len(lines) > 1 and lines[-1].startswith("  ") else (lines[-1] if lines else "")
    return shown.replace(str(tmp), "$TMP")


def sae_copy(tmp: Path, case: str, name: str) -> Path:
    folder = tmp / name
    shutil.copytree(FIXTURES / case, folder)
    (folder / "expected.safetensors").unlink()
    return folder


def rows(tmp: Path) -> list[tuple[str, str, int, str]]:
    out: list[tuple[str, str, int, str]] = []

    def case(name: str, args: list[str]) -> None:
        code, line = run(args, tmp)
        out.append((name, "sparekit " + " ".join(a.replace(str(tmp), "$TMP") for a in args), code, line))
        print(f"{name}: {code} {line}", file=sys.stderr, flush=True)  # progress

    cut = sae_copy(tmp, "topk", "cut")
    weights = cut / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    case("truncated sae_weights.safetensors", ["sae", "convert", str(cut), str(tmp / "o1")])
    case("truncated sae_weights.safetensors", ["sae", "features", "--sae", str(cut)])
    garbage = sae_copy(tmp, "topk", "garbage")
    weights = garbage / "sae_weights.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])
    case("safetensors header garbage", ["sae", "convert", str(garbage), str(tmp / "o2")])
    bad_k = sae_copy(tmp, "topk", "bad_k")
    cfg = json.loads((bad_k / "cfg.json").read_text())
    (bad_k / "cfg.json").write_text(json.dumps({**cfg, "k": "abc"}))
    case('cfg.json with "k": "abc"', ["sae", "convert", str(bad_k), str(tmp / "o3")])
    npz = tmp / "layer_2" / "params.npz"
    npz.parent.mkdir()
    np.savez(npz, W_enc=np.array([{"a": 1}], dtype=object))
    case("Gemma Scope params.npz with an object array", ["sae", "convert", str(npz), str(tmp / "o4")])
    blocker = tmp / "a-file"
    blocker.write_text("x")
    case("--out under a file: eval", ["eval", "--limit", "4", "--out", str(blocker / "x")])
    case("--out under a file: capture", ["capture", "--dataset", "default", "--limit", "4", "--out", str(blocker / "x")])
    case("--out under a file: sae convert", ["sae", "convert", str(sae_copy(tmp, "topk", "ok")), str(blocker / "x")])
    case("--out under a file: data build-default", ["data", "build-default", "--out", str(blocker / "x.jsonl")])

    run_dir = tmp / "run"
    eval_args = ["eval", "--limit", "4", "--seeds", "42", "--k-shot", "0", "--out", str(run_dir)]
    run(eval_args, tmp)
    chunk = sorted((run_dir / "predictions").iterdir())[0]
    chunk.write_bytes(chunk.read_bytes()[:-5])
    proc = subprocess.run([sys.executable, "-m", "sparekit", *eval_args], capture_output=True, text=True, env=ENV)
    warning = next((ln for ln in proc.stderr.splitlines() if "damaged" in ln), "")
    out.append(("eval rerun after a truncated predictions chunk",
                "sparekit " + " ".join(eval_args).replace(str(tmp), "$TMP"), proc.returncode,
                warning.replace(str(tmp), "$TMP")))

    case("detect an empty prompt", ["detect", ""])
    case("detect a whitespace-only prompt", ["detect", "  \n "])
    case("detect a 19,618-token prompt", ["detect", "context: " + "word " * 19600 + "\nquestion: q\nanswer:"])
    out[-1] = (out[-1][0], 'sparekit detect "context: word word … (19,600 words)"', *out[-1][2:])

    for name, fixture in (("SAELens TopK with rescale_acts_by_decoder_norm", "topk-rescale"),
                          ("SAELens gated SAE", "gated")):
        folder = sae_copy(tmp, fixture, fixture)
        case(name, ["sae", "convert", str(folder), str(tmp / f"{fixture}-out")])
    case("--layers 8-4", ["capture", "--dataset", "default", "--limit", "4", "--layers", "8-4",
                          "--out", str(tmp / "acts")])
    bom = tmp / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + (ROOT / "src/sparekit/assets/datasets/default.jsonl").read_bytes()[:3000]
                    .rsplit(b"\n", 1)[0] + b"\n")
    case("JSONL with a UTF-8 BOM", ["data", "show", "--dataset", str(bom), "--rows", "0"])

    lock_args = ["eval", "--limit", "16", "--seeds", "42", "--k-shot", "0", "--out", str(tmp / "locked")]
    first = subprocess.Popen([sys.executable, "-m", "sparekit", *lock_args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=ENV)
    while not (tmp / "locked" / "config.json").is_file() and first.poll() is None:
        time.sleep(0.5)
    case("a second eval on the same --out", lock_args)
    first.kill()  # it has shown what it holds; no need to finish
    first.wait()

    perms = tmp / "perms"
    code, _ = run(["sae", "convert", str(sae_copy(tmp, "topk", "p")), str(perms)], tmp)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in perms.iterdir()}
    out.append(("safetensors written by sparekit", "sparekit sae convert … $TMP/perms", code,
                f"sae_weights.safetensors {modes['sae_weights.safetensors']}, cfg.json {modes['cfg.json']}"))
    case("shipped SAE blocks in `sae --help`", ["sae", "--help"])
    out[-1] = (*out[-1][:3], next(ln.strip() for ln in subprocess.run(
        [sys.executable, "-m", "sparekit", "sae", "--help"], capture_output=True, text=True, env=ENV
    ).stdout.splitlines() if "Shipped" in ln))
    case("`--dataset nqswap` without ../shared", ["data", "show", "--dataset", "nqswap", "--rows", "0"])
    return out


def rescale_numbers() -> str:
    """Largest differences from SAELens's own outputs for the two SAEs the issue names."""
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


def main() -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        table = rows(tmp)
    print("| case | command | exit | what it prints |")
    print("|---|---|---|---|")
    for case, command, code, line in table:
        shown = command if len(command) < 90 else command[:87] + "…"
        print(f"| {case} | `{shown}` | {code} | {line.replace('|', '/')} |")
    print(f"\nAgainst SAELens 6.54.12's own encode/decode (tests/fixtures/saelens): {rescale_numbers()}")


if __name__ == "__main__":
    main()
