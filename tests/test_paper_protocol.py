"""`--protocol paper`: the official SpARE code's splits, behaviour prompts, test demonstrations and values."""

from __future__ import annotations

import pytest

from sparekit.data import load_dataset
from sparekit.data.dataset import ConflictDataset, ConflictExample
from sparekit.errors import SparekitError
from sparekit.steering.behaviour import BEHAVIOUR_FLAVOURS, behaviour_prompts
from sparekit.steering.bench import BenchConfig, SteeringBenchmark, paper_config
from sparekit.steering.bench.protocol import paper_choice
from sparekit.utils.io import atomic_write_json


def _grouped(n_groups: int = 12, per_group: int = 2) -> ConflictDataset:
    """A dataset whose question groups hold several rows (as NQ-Swap's do)."""
    rows = [ConflictExample(id=f"g{g}-{r}", question=f"question {g}?", org_context=f"fact {g} is A{g}.",
                            org_answer=(f"A{g}",), sub_context=f"fact {g} is B{g}-{r}.", sub_answer=(f"B{g}-{r}",),
                            relation="capital" if g % 2 else "currency")
            for g in range(n_groups) for r in range(per_group)]
    return ConflictDataset(rows, "grouped")


def _questions(demos: tuple[str, ...]) -> list[str]:
    return [d.split("question: ", 1)[1].split("\n", 1)[0] for d in demos]


def test_preset_values_and_a_gate_is_refused():
    config = paper_config()
    assert config.seeds == config.behaviour_seeds == (42, 43, 44, 45, 46)
    assert config.pool_groups == 128 and config.dev_groups == 0 and config.test_limit is None
    assert not any("+" in m for m in config.methods)
    assert paper_config(seeds=(1,)).seeds == (1,)
    with pytest.raises(SparekitError, match="no dev split"):
        paper_config(methods=("spare+gate",))
    with pytest.raises(SparekitError, match="unknown protocol"):
        BenchConfig(protocol="official")


def test_every_k_for_every_seed_and_the_flavours_share_demonstration_rows():
    pool = load_dataset("default", limit=30, seed=0)
    prompts = behaviour_prompts(pool, seeds=(42, 43), every_k=True)
    assert len(prompts) == 2 * 3 * len(pool) * len(BEHAVIOUR_FLAVOURS)
    assert sorted({len(p.demos) for p in prompts}) == [3, 4, 5]
    for i in range(0, len(prompts), 3):
        triple = prompts[i:i + 3]
        assert len({p.example.id for p in triple}) == 1
        assert len({tuple(_questions(p.demos)) for p in triple}) == 1  # same rows ...
        assert len({p.demos for p in triple}) == 3  # ... shown with what each flavour teaches
        assert triple[0].example.question not in _questions(triple[0].demos)
    # the project's own recipe draws k and rows per prompt (unchanged)
    own = behaviour_prompts(pool, seeds=(42, 43))
    assert len(own) == 2 * len(pool) * len(BEHAVIOUR_FLAVOURS)


def test_splits_take_whole_pool_groups_and_test_every_other_row(tiny_llama, tmp_path):
    data = _grouped()
    # only the first row of groups 0-7 is "memorised": the pool still takes both rows of its groups
    atomic_write_json(tmp_path / "memorised.json", {"ids": [f"g{g}-0" for g in range(8)]})
    bench = SteeringBenchmark(tiny_llama, data, paper_config(methods=("none",), pool_groups=4), tmp_path,
                              progress=False)
    pool, dev, test = bench.splits()
    pool_groups = {ex.group for ex in pool}
    assert len(pool_groups) == 4 and len(pool) == 8 and len(dev) == 0
    assert pool_groups <= {ex.group for ex in data if ex.id.endswith("-0") and int(ex.id[1:].split("-")[0]) < 8}
    assert {ex.id for ex in test} == {ex.id for ex in data if ex.group not in pool_groups}  # memorised or not

    per_seed = {seed: bench.test_prompts(test, pool, "sub", seed) for seed in (42, 43)}
    for prompts in per_seed.values():
        assert len({p.demos for p in prompts}) == 1  # one fixed demonstration set per seed
        assert set(_questions(prompts[0].demos)) <= {ex.question for ex in pool}
        assert all(d.startswith(f"context: fact {q.split()[1][:-1]} is A") for d, q in
                   zip(prompts[0].demos, _questions(prompts[0].demos)))  # org_ctx / org_ans
    assert per_seed[42][0].demos != per_seed[43][0].demos


def test_no_tuning_the_published_values_per_family(tiny_llama, tmp_path, monkeypatch):
    assert paper_choice("spare", "gemma2", "memory") == {"params": {"mi_mass": 0.01}, "strength": 1.8, "dev_em": None}
    assert paper_choice("spare", "gemma3_text", "context")["strength"] == 3.0
    assert paper_choice("spare", "llama", "context") == {"params": {"mi_mass": 0.07}, "strength": 2.0, "dev_em": None}
    assert paper_choice("actadd", "llama", "memory")["strength"] == 4.0  # the method's default

    def no_generation(*args, **kwargs):
        raise AssertionError("the paper protocol tunes nothing on dev")

    monkeypatch.setattr("sparekit.steering.base.greedy_generate", no_generation)
    bench = SteeringBenchmark(tiny_llama, _grouped(), paper_config(methods=("actadd",)), tmp_path, progress=False)
    tuned = bench.tuner.tune("actadd", None, None, None)  # type: ignore[arg-type]
    assert tuned["memory"]["strength"] == tuned["context"]["strength"] == 4.0


def test_cli_refuses_a_gated_method_under_the_paper_protocol_before_loading(capsys):
    from sparekit.cli.main import main

    code = main(["bench", "steer", "--protocol", "paper", "--methods", "spare+gate", "--model", "no/such-model"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no dev split" in err[0]


@pytest.mark.slow
def test_paper_protocol_runs_end_to_end(default_lm, tmp_path):
    data = load_dataset("default", limit=40, seed=5)
    atomic_write_json(tmp_path / "memorised.json", {"ids": [ex.id for ex in data][:24]})
    config = paper_config(methods=("none", "actadd"), seeds=(42,), behaviour_seeds=(42,), pool_groups=8,
                          layers=(9,), test_limit=6)
    summary = SteeringBenchmark(default_lm, data, config, tmp_path, progress=False).run()
    assert summary["splits"] == {"pool_groups": 8, "dev_groups": 0, "test_items": 6, "test_groups": 6}
    # every k for the one seed, three flavours per (item, k), minus "other" answers
    counts = summary["behaviour"]["label_counts"]
    assert sum(counts.values()) == 3 * 8 * 3
    assert summary["methods"]["actadd"]["tuned"]["memory"] == {"params": {}, "strength": 4.0, "dev_em": None}
    assert not (tmp_path / "generations" / "dev").exists()


def test_cli_preset_fills_the_sizes_not_given(capsys):
    import json

    from sparekit.cli.main import main

    assert main(["bench", "steer", "--protocol", "paper", "--seeds", "7", "--methods", "none,spare", "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["protocol"] == "paper" and config["seeds"] == [7] and config["methods"] == ["none", "spare"]
    assert config["behaviour_seeds"] == [42, 43, 44, 45, 46] and config["dev_groups"] == 0
    assert config["test_limit"] is None
