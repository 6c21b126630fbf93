"""benchmarks/answer_types.py counts only the dev-tuned cells, combined labels included, and refuses a run
without them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sparekit.data import load_dataset
from sparekit.steering.bench.protocol import setting_slug

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "answer_types.py"


def _write_cell(folder: Path, prefix: str, seed: int, way: str, predictions: list[str]) -> None:
    rows = [{"id": f"x{i}:sub", "prompt": "p", "prediction": p} for i, p in enumerate(predictions)]
    (folder / f"{prefix}-seed{seed}-sub-{way}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run(run: Path, methods: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(run), "--methods", methods],
                          capture_output=True, text=True, timeout=300)


def test_counts_the_tuned_cells_of_plain_and_combined_labels(tmp_path):
    data = load_dataset("default")
    country = next(ex.org_answer[0] for ex in data if ex.relation == "city_country")
    capital = next(ex.org_answer[0] for ex in data if ex.relation == "capital")
    folder = tmp_path / "held-out-capital"
    cells = folder / "generations" / "test"
    cells.mkdir(parents=True)
    spare = {"params": {"mi_mass": 0.1}, "strength": 2}
    results = {"methods": {
        "none": {"tuned": {"memory": {"params": {}, "strength": None}}},
        "spare+cad": {"tuned": {"memory": spare}, "tuned_partner": {"memory": {"params": {}, "strength": 0.5}}}}}
    (folder / "results.json").write_text(json.dumps(results))
    _write_cell(cells, setting_slug("none", {}, None), 42, "any", [capital, capital])
    tuned = setting_slug("spare+cad", {"mi_mass": 0.1, "cad_strength": 0.5}, 2)
    _write_cell(cells, tuned, 42, "memory", [country, capital])
    _write_cell(cells, tuned, 43, "memory", [country, country])
    # a swept setting the dev split did not choose: must not be counted
    _write_cell(cells, setting_slug("spare+cad", {"mi_mass": 0.1, "cad_strength": 0.5}, 1), 42, "memory",
                [country] * 5)
    proc = _run(tmp_path, "none,spare+cad")
    assert proc.returncode == 0, proc.stderr
    assert "| capital | 0 / 2 | 3 / 4 |" in proc.stdout, proc.stdout


def test_a_method_without_tuned_cells_is_an_error(tmp_path):
    folder = tmp_path / "held-out-capital"
    (folder / "generations" / "test").mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(
        {"methods": {"spare": {"tuned": {"memory": {"params": {}, "strength": 1}}}}}))
    proc = _run(tmp_path, "spare")
    assert proc.returncode != 0
    assert "no test cells of spare's dev-tuned setting" in proc.stderr
