"""The steering benchmark (``sparekit bench steer`` / ``bench frontier``), one room per job, each
importing only the rooms above it in this list:

- :mod:`~.protocol`: what decides the numbers (:class:`BenchConfig`, the paper preset), method labels,
  the prompts and the names of cached cells;
- :mod:`~.data`: the memorised items, the pool / dev / test splits, the pool's behaviour data;
- :mod:`~.gating`: the run's conflict gate, fitted on the pool and calibrated on dev;
- :mod:`~.cells`: one cached, scored cell of generations;
- :mod:`~.tuning`: each method's fits and its dev-tuned settings per direction;
- :mod:`~.export`: the tuned methods as fitted bundles (:mod:`sparekit.steering.fitted`);
- :mod:`~.runner`: the run (:class:`SteeringBenchmark`, one process or data-parallel), the frontier
  and leave one relation (kind, prompt format) out.

Tables and frontier means are in :mod:`sparekit.reporting.steering`.
"""

from sparekit.steering.bench.protocol import DEFAULT_METHODS, DEV_SEED, BenchConfig, eval_prompts, paper_config
from sparekit.steering.bench.runner import SteeringBenchmark, held_out_folds, leave_one_out, leave_one_out_frontier

__all__ = ["DEFAULT_METHODS", "DEV_SEED", "BenchConfig", "SteeringBenchmark", "eval_prompts", "held_out_folds",
           "leave_one_out", "leave_one_out_frontier", "paper_config"]
