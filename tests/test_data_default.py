"""The embedded default dataset: shipped file, deterministic builder, clean substitutions."""

from __future__ import annotations

import json
import re

import pytest

from sparekit.data import load_dataset, read_jsonl
from sparekit.data.dataset import normalize_answer
from sparekit.data.default import RELATIONS, build_default_dataset, source_versions, write_default_dataset
from sparekit.data.loaders import DEFAULT_ASSET

META = json.loads(DEFAULT_ASSET.with_name("default.meta.json").read_text())


@pytest.fixture(scope="module")
def built():
    if source_versions() != META["sources"]:
        pytest.skip(f"source packages {source_versions()} differ from the ones the file was built with {META['sources']}")
    return build_default_dataset()


def test_shipped_dataset_shape():
    data = load_dataset("default")
    assert len(data) >= 1000 and len(data) == META["rows"]
    counts = data.relation_counts()
    assert set(counts) == set(RELATIONS) and min(counts.values()) >= 100
    assert len(data.groups()) == len(data)  # one substitution per question
    assert len({ex.id for ex in data}) == len(data)


def test_builder_reproduces_the_shipped_file(built, tmp_path):
    out = tmp_path / "default.jsonl"
    write_default_dataset(built, out)
    assert out.read_bytes() == DEFAULT_ASSET.read_bytes()
    assert json.loads((tmp_path / "default.meta.json").read_text()) == META


def test_other_seed_changes_substitutions_not_facts(built):
    other = build_default_dataset(seed=1)
    assert [ex.org_answer for ex in other] == [ex.org_answer for ex in built]
    assert sum(a.sub_answer != b.sub_answer for a, b in zip(built, other)) > len(built) // 2


def test_substitute_is_never_the_answer_or_an_alias():
    for ex in read_jsonl(DEFAULT_ASSET):
        org = {normalize_answer(a) for a in ex.org_answer}
        sub = {normalize_answer(a) for a in ex.sub_answer}
        assert not org & sub, ex.id
        assert ex.org_context != ex.sub_context
        assert ex.org_answer[0] in ex.org_context and ex.sub_answer[0] in ex.sub_context
        assert ex.org_answer[0] not in ex.sub_context or ex.org_answer[0] in ex.question, ex.id
        assert not any(a and a in normalize_answer(ex.question).split() for a in org), ex.id


def test_same_type_substitution():
    data = load_dataset("default")
    answers = {r: {normalize_answer(ex.org_answer[0]) for ex in data if ex.relation == r} for r in RELATIONS}
    for ex in data:
        assert normalize_answer(ex.sub_answer[0]) in answers[ex.relation], ex.id


def test_passage_builder_reproduces_the_shipped_file(built, tmp_path):
    """Same rows as the default set, each context a 3-6 sentence paragraph stating the fact once."""
    from sparekit.data.default import build_passage_dataset
    from sparekit.data.loaders import PASSAGES_ASSET

    passages = build_passage_dataset()
    out = tmp_path / "default-passages.jsonl"
    write_default_dataset(passages, out)
    assert out.read_bytes() == PASSAGES_ASSET.read_bytes()
    shipped = load_dataset("default-passages")
    assert len(shipped) == len(built)
    for ex, base in zip(shipped, built):
        assert (ex.id, ex.question, ex.org_answer, ex.sub_answer) == (base.id, base.question, base.org_answer,
                                                                      base.sub_answer)
        assert base.org_context in ex.org_context and base.sub_context in ex.sub_context
        assert ex.org_context.replace(base.org_context, base.sub_context) == ex.sub_context
        assert 3 <= len(re.split(r"\. (?=[^\W\d_])", ex.org_context)) <= 6, ex.org_context  # "İzmir", "Cairo"
        rest = ex.org_context.replace(base.org_context, "")
        for alias in ex.org_answer + ex.sub_answer:  # the answer appears only in the fact sentence
            assert f" {normalize_answer(alias)} " not in f" {normalize_answer(rest)} " or \
                normalize_answer(alias) in normalize_answer(ex.question), ex.id
