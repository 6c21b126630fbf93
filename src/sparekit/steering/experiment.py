"""``sparekit bench steer`` and ``bench frontier`` as config dataclasses with a ``run()``.

Each is a :class:`~sparekit.steering.bench.protocol.BenchConfig` (the protocol, whose fields
decide the numbers) plus what to run it on and where (dataset, model, run directory,
device). ``__cli__`` gives the protocol fields their command-line names and help.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from sparekit import models  # models.load_model, looked up per call: tests and embedders may swap it
from sparekit.data import load_dataset
from sparekit.data.formats import FORMATS
from sparekit.reporting.frontier import plot_frontier
from sparekit.reporting.steering import fold_table, markdown_table
from sparekit.steering.base import REGISTRY
from sparekit.steering.bench import (BenchConfig, SteeringBenchmark, held_out_folds, leave_one_out,
                                     leave_one_out_frontier, paper_config)
from sparekit.utils.config import config_dict, device_field, device_map_field, model_field, option
from sparekit.utils.io import atomic_write_text
from sparekit.utils.registry import unknown_name
from sparekit.utils.rundir import RunDir, run_path


@dataclasses.dataclass
class _BenchRun(BenchConfig):
    dataset: str = option("default", short="-d", help="default, default-passages, broad, broad-passages, nqswap, or a JSONL path.")
    model: str = model_field()
    out: str | None = option(None, help="Run directory (default runs/bench-steer-<dataset>-<model>); rerun to resume.")
    device: str | None = device_field()
    device_map: str | None = device_map_field()
    batch_size: int = option(8, min=1, help="Prompts per forward pass.")
    split_by: str = option("group", choices=("group", "relation", "kind", "format"),
                           help="group: pool/dev/test question groups; relation: leave one relation out in turn (fit "
                                "and tune on the others, test on it), per held-out relation, the mean, the worst fold "
                                "and the spread; kind: the same per kind of knowledge (broad corpus); format: the same "
                                "per prompt format of --fit-formats.")

    __cli__: ClassVar[dict[str, dict[str, Any]]] = {
        "methods": {"help": "Comma-separated methods; append +gate to steer only where the conflict probe fires, "
                            "+recall only where the passage does not name the model's closed-book answer (the "
                            "recall gate: fits nothing). A finished run accepts more methods (and other grids)."},
        "seeds": {"help": "Seeds for the test demonstrations. A finished run accepts more seeds: they add test "
                          "cells only."},
        "layers": {"help": "Candidate layers (SpARE edits all)."},
        "pool_groups": {"help": "Feature-learning question groups.", "min": 1},
        "dev_groups": {"help": "Question groups for tuning.", "min": 1},
        "test_limit": {"help": "Test items (seeded sample).", "min": 1},
        "behaviour_seeds": {"help": "Demonstration seeds of the behaviour data (each doubles the pool prompts)."},
        "k_shot": {"help": "Demonstrations per prompt.", "min": 0},
        "split_seed": {"help": "Seed of the pool/dev/test split and of the test sample."},
        "memorised_seeds": {"help": "Closed-book demonstration seeds: an item counts as memorised where the model "
                                    "answers it right under each (several keep out what it recalls only under some "
                                    "demonstrations)."},
        "gate_layer": {"help": "Layer of the +gate conflict probe (default: the best dev AUROC from 1/3 depth on)."},
        "gate_max_false_positive_rate": {"help": "The gate fires on this share of dev no-conflict prompts.",
                                         "min": 0.0, "max": 1.0},
        "param_grids": {"flag": "--grid",
                        "help": 'Dev-tuned parameters per method as JSON, e.g. \'{"actadd": {"layer": [6, 8]}}\'.'},
        "strength_grids": {"flag": "--strengths", "help": 'Strength grids per method as JSON, e.g. \'{"spare": [2, 4, 8]}\'.'},
        "sweep_strengths": {"flag": "--sweep",
                            "help": 'Extra strengths for `bench frontier` only (not tuned), e.g. \'{"actadd": [1]}\'.'},
        "held_out_relation": {"help": "Test on this relation's items only; fit and tune on the others."},
        "held_out_kind": {"help": "Test on this kind's items only (all its relations); fit and tune on the other "
                                  "kinds."},
        "test_format": {"choices": tuple(FORMATS),
                        "help": "Prompt format of the test prompts; one outside --fit-formats is held out. A finished "
                                "run accepts it: it adds test cells only and writes results-<format>.json beside "
                                "results.json."},
        "fit_formats": {"help": "Comma-separated prompt formats of the behaviour data, the gate and dev tuning (each "
                                "item asked in one of them): fit across formats, e.g. three_shot,zero_shot,llamaindex "
                                "with --test-format rag to hold rag out."},
        "protocol": {"choices": ("sparekit", "paper"),
                     "help": "sparekit: memorised items, dev-tuned, demonstrations per item. paper: the official "
                             "SpARE code's protocol (all rows, every k for seeds 42-46, fixed test demonstrations, the "
                             "published K and alpha, no tuning); its sizes apply unless set here or in --config."},
    }

    def __post_init__(self) -> None:
        if self.protocol == "paper":  # the preset's sizes, except those the command line or a file changed
            preset, defaults = paper_config(), BenchConfig()
            for f in dataclasses.fields(BenchConfig):
                if getattr(self, f.name) == getattr(defaults, f.name):
                    setattr(self, f.name, getattr(preset, f.name))
        super().__post_init__()

    def bench_config(self) -> BenchConfig:
        """The :class:`BenchConfig` part: what the run directory records and compares."""
        return BenchConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(BenchConfig)})

    def _load(self, split_by: str = "group"):
        """The model, dataset and run directory (checked before the model loads where possible)."""
        for label in self.methods:
            if label.partition("+")[0] not in REGISTRY:
                raise unknown_name("method", label.partition("+")[0], REGISTRY, where="--methods")
        data = load_dataset(self.dataset)
        if split_by != "group":
            held_out_folds(data, self.bench_config(), split_by)  # bad input fails before the model loads
        lm = models.load_model(self.model, device=self.device, device_map=self.device_map)
        suffix = "" if split_by == "group" else f"-by-{split_by}"
        out = Path(self.out) if self.out else run_path("runs", "bench-steer", data.name, lm.info.model_hash[:8] + suffix)
        return lm, data, out


@dataclasses.dataclass
class BenchSteerExperiment(_BenchRun):
    """``sparekit bench steer``: every method tuned on dev and scored on test, mean ± std over seeds."""

    def run(self, progress: bool = True) -> dict:
        """The summary (``results.json``), its markdown table under ``table`` (``results.md``) and ``run_dir``."""
        lm, data, out = self._load(self.split_by)
        if self.split_by != "group":  # each held-out run checks its own config
            RunDir(out).record_experiment(config_dict(self))
            summary = leave_one_out(lm, data, self.bench_config(), out, self.batch_size, progress, self.split_by)
            table = fold_table(summary)
        else:
            runner = SteeringBenchmark(lm, data, self.bench_config(), out, self.batch_size, progress)
            runner.run_dir.record_experiment(config_dict(self))  # the run directory accepted this config
            summary = runner.run()
            table = markdown_table(summary)
        atomic_write_text(out / self.output("results.md"), table + "\n")
        return {**summary, "table": table, "run_dir": str(out)}


@dataclasses.dataclass
class BenchFrontierExperiment(_BenchRun):
    """``sparekit bench frontier``: each method's strength sweep on test, plotted per direction."""

    cached_only: bool = option(False, help="Generate nothing: draw the points earlier runs computed.")

    def run(self, progress: bool = True) -> dict:
        """``curves`` (``frontier.json``; with ``--split-by relation``, ``kind`` or ``format`` the mean over the
        held-out folds, each fold's under ``held_out``), the ``plot`` path and ``run_dir``."""
        lm, data, out = self._load(self.split_by)
        if self.split_by != "group":
            result = leave_one_out_frontier(lm, data, self.bench_config(), out, self.batch_size, progress,
                                            self.cached_only, self.split_by)
            folds = held_out_folds(data, self.bench_config(), self.split_by)
            for value, curves in result["held_out"].items():
                plot_frontier(curves, out / f"held-out-{value}" / folds[value].output("frontier.png"),
                              title=f"{lm.info.name} on {data.name}, {value} held out")
            plot = plot_frontier(result["mean"], out / self.output("frontier.png"),
                                 title=f"{lm.info.name} on {data.name}: mean over held-out {self.split_by}s")
            return {"curves": result["mean"], "held_out": result["held_out"], "plot": str(plot), "run_dir": str(out)}
        curves = SteeringBenchmark(lm, data, self.bench_config(), out, self.batch_size, progress).frontier(
            cached_only=self.cached_only)
        plot = plot_frontier(curves, out / self.output("frontier.png"), title=f"{lm.info.name} on {data.name}")
        return {"curves": curves, "plot": str(plot), "run_dir": str(out)}
