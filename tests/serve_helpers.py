"""Shared by the server tests: a tiny model with fitted probes, a fitted method and a gate; a live server."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from sparekit.evaluation.generation import greedy_generate
from sparekit.models.loading import LoadedModel
from sparekit.probes.linear import LinearProbe
from sparekit.serve import serve_in_thread as serving  # noqa: F401  (re-exported for the tests)
from sparekit.serve.engine import Engine, Job
from sparekit.serve.options import RowSteer
from sparekit.steering import BehaviourData, FittedBundle, FittedSteering, make_method
from sparekit.steering.gate import ProbeGate
from sparekit.utils.io import atomic_write_json

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
PROBE_SITE = "resid.2"
DEMO = "context: Paris is in France.\nquestion: Where is Paris?\nanswer: France\n\n"


def fit_assets(lm: LoadedModel, root: Path) -> tuple[Path, Path]:
    """Probes at resid.2 and an ``actadd`` at layer 1 (both directions) with a gate, fitted on random states."""
    rng = np.random.default_rng(0)
    d, h = lm.info.d_model, lm.info.model_hash
    X, y = rng.normal(size=(64, d)).astype(np.float32), np.tile([0, 1], 32)
    probes = root / "probes"
    for target in ("conflict", "source"):
        LinearProbe(seed=0, site=PROBE_SITE, model_hash=h, epochs=5).fit(X, y).save(probes / target)
    atomic_write_json(probes / "detect.json", {"model_hash": h, "demos": [DEMO]})
    behaviour = BehaviourData(prompts=[], labels=y, hidden={1: torch.as_tensor(X) * 4})
    method = make_method("actadd", layer=1).fit(behaviour)
    gate_probe = LinearProbe(seed=0, site="resid.2", model_hash=h, epochs=5).fit(X, y)
    gate = ProbeGate(gate_probe, layer=2, threshold=0.5)
    directions = {toward: FittedSteering(method, 4.0, (DEMO,)) for toward in ("context", "memory")}
    fitted = FittedBundle("actadd", directions, (DEMO,), h, gate).save(root / "fitted" / "actadd")  # type: ignore[arg-type]
    return probes, fitted


def reference(lm: LoadedModel, engine: Engine, prompt: str, steer: RowSteer | None, max_tokens: int) -> str:
    """The same prompt alone, through the library: greedy_generate inside ``method.steer`` (or unsteered)."""
    if steer is None:
        return greedy_generate(lm, [prompt], max_new_tokens=max_tokens, stop_at_newline=False)[0]
    method = engine.steering.methods[steer.method][steer.toward].method
    with method.steer(lm, toward=steer.toward, strength=steer.strength):
        return greedy_generate(lm, [prompt], max_new_tokens=max_tokens, stop_at_newline=False)[0]


def run_jobs(engine: Engine, rows: list[dict]) -> list[dict]:
    """Run ``rows`` (Job keyword arguments) as one batch; each result has its events by kind."""
    results: list[dict] = [{"delta": []} for _ in rows]

    def emitter(out: dict):
        return lambda kind, data: out["delta"].append(data) if kind == "delta" else out.__setitem__(kind, data)

    engine.run([Job(emit=emitter(out), **row) for out, row in zip(results, rows)])
    return results


def post(url: str, body: dict | bytes, headers: dict | None = None) -> tuple[int, dict | str]:
    """POST JSON (or raw bytes) and return (status, parsed JSON body, or the text of an event stream)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    return status, text if text.startswith("data:") else json.loads(text)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def metric(text: str, name: str) -> float:
    """The value of one sample line (``name`` with its labels, exactly as printed) in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def chromium(width: int = 1100, height: int = 760):
    """A headless Chromium driven by Debian's chromedriver (Selenium)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)
