"""Fits and benchmarks on too little data say so: how many rows there were, the threshold, what to pass."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from sparekit.data import load_dataset
from sparekit.probes.linear import LinearProbe
from sparekit.steering import BehaviourData, make_method
from sparekit.utils import guards
from sparekit.utils.guards import MIN_BEHAVIOUR_PER_SIDE, MIN_PROBE_ROWS_PER_CLASS, SmallDataWarning, warn_small_data


@pytest.fixture(autouse=True)
def fresh_guards():
    """Each test sees the first warning of a process."""
    guards._warned.clear()
    yield
    guards._warned.clear()


def test_warns_once_per_kind_with_the_counts_and_the_fix():
    with pytest.warns(SmallDataWarning) as seen:
        answers = [warn_small_data("x fit", {"a": 3, "b": 40}, 32, "pass more"),
                   warn_small_data("x fit", {"a": 2, "b": 40}, 32, "pass more"),  # too small again: said once
                   warn_small_data("y fit", {"a": 1}, 32, "pass more")]
    assert answers == [True, True, True]
    assert [str(w.message) for w in seen] == ["x fit on too little data: 3 a, 40 b (fewer than 32); pass more",
                                              "y fit on too little data: 1 a (fewer than 32); pass more"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_small_data("z fit", {"a": 32}, 32, "pass more")


def _behaviour(n_context: int, n_memory: int) -> BehaviourData:
    labels = np.array([1] * n_context + [0] * n_memory)
    hidden = torch.randn(len(labels), 8, generator=torch.Generator().manual_seed(0)) + torch.as_tensor(labels)[:, None]
    return BehaviourData([], labels, {1: hidden})


def test_a_steering_fit_on_few_behaviour_prompts_warns():
    with pytest.warns(SmallDataWarning, match=r"actadd fit on too little data: 15 uses-context prompts, "
                                              r"3 uses-memory prompts \(fewer than 32\); fit on more pool groups"):
        make_method("actadd", layer=1).fit(_behaviour(15, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_method("actadd", layer=1).fit(_behaviour(MIN_BEHAVIOUR_PER_SIDE, MIN_BEHAVIOUR_PER_SIDE))


def test_a_probe_on_few_rows_per_class_warns():
    X = torch.randn(60, 4, generator=torch.Generator().manual_seed(0))
    y = np.array([0] * 50 + [1] * 10)
    with pytest.warns(SmallDataWarning, match=r"probe fit on too little data: 50 negatives, 10 positives \(fewer "
                                              r"than 20\)"):
        LinearProbe(epochs=1).fit(X, y)
    n = MIN_PROBE_ROWS_PER_CLASS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LinearProbe(epochs=1).fit(X[:2 * n], np.array([0, 1] * n))


def test_a_benchmark_with_fewer_test_items_than_asked_warns(tiny_llama, tmp_path):
    from sparekit.steering.bench import BenchConfig, SteeringBenchmark
    from sparekit.utils.io import atomic_write_json

    dataset = load_dataset("default", limit=160, seed=2)
    memorised = tmp_path / "memorised.json"
    atomic_write_json(memorised, {"ids": [ex.id for ex in dataset]})

    def splits(test_limit: int):
        config = BenchConfig(methods=("none",), pool_groups=30, dev_groups=10, test_limit=test_limit)
        return SteeringBenchmark(tiny_llama, dataset, config, tmp_path / f"run{test_limit}", progress=False,
                                 memorised_file=memorised).splits()

    with pytest.warns(SmallDataWarning, match=r"steering benchmark on too little data: (\d+) memorised test items "
                                              r"\(fewer than 500\); --test-limit asks for 500") as seen:
        _, _, test = splits(500)
    assert f" {len(test)} memorised test items" in str(seen[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits(20)


def test_the_cli_prints_it_on_one_line(capsys):
    from sparekit.cli.main import _show_warning

    _show_warning(SmallDataWarning("probe fit on too little data: 3 positives"), SmallDataWarning, "f.py", 1)
    assert capsys.readouterr().err == "warning: probe fit on too little data: 3 positives\n"
