"""The broad conflict corpus: shipped file and meta, same-type substitutions, reproducible builds, error lines."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace

import pytest

from sparekit.cli.main import main
from sparekit.data import broad, load_dataset
from sparekit.data.broad import build_candidates, build_passages, check_relation, keep_memorised, write_broad
from sparekit.data.dataset import ConflictDataset, normalize_answer, read_jsonl
from sparekit.data.loaders import BROAD_ASSET, BROAD_PASSAGES_ASSET
from sparekit.errors import SparekitError
from sparekit.utils.env import package_versions

META = json.loads(BROAD_ASSET.with_name("broad.meta.json").read_text())
RULE_ONLY = ["month_abbreviation", "weekday_abbreviation", "opposite", "colour"]  # no source package, quick to build
#: kept outside the project as an independent test of transfer (issue 29)
FORBIDDEN = re.compile(r"official language|chemical|\belements?\b|\bstate of\b|\bU\.?S\.? states?\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def shipped() -> ConflictDataset:
    return load_dataset("broad")


@pytest.fixture(scope="module")
def same_sources() -> None:
    """Rebuilding the shipped rows needs the package versions they were built from (word lists change)."""
    if package_versions(broad.PACKAGES) != META["sources"]:
        pytest.skip(f"source packages {package_versions(broad.PACKAGES)} differ from the build's {META['sources']}")


@pytest.fixture(scope="module")
def candidates(same_sources) -> ConflictDataset:
    return build_candidates(0, list(META["relations"]))


def test_shipped_corpus_is_broad_and_matches_its_meta(shipped):
    counts = shipped.relation_counts()
    kinds = {ex.relation: ex.kind for ex in shipped}
    assert all(ex.relation and ex.kind for ex in shipped)
    assert len(counts) >= 16 and len(set(kinds.values())) >= 6
    assert len(shipped) >= 1500 and len(shipped) == META["rows"] and counts == META["relations"]
    assert kinds == META["kinds"] and {"capital", "continent", "currency", "city_country"} <= set(counts)
    stats = META["filter"]["relations"]
    for relation, n in counts.items():
        assert stats[relation]["memorised"] == n >= broad.BY_NAME[relation].min_memorised, relation
        assert n <= stats[relation]["candidates"]
    assert META["model"]["hash"] and META["seed"] == 0 and all(META["sources"].values())
    assert len({ex.id for ex in shipped}) == len(shipped)


def test_every_relation_is_asked_and_stated_two_ways(shipped):
    for relation in broad.RELATIONS:
        check_relation(relation)
    by_relation: dict[str, set[str]] = {}
    for ex in shipped:
        by_relation.setdefault(ex.relation, set()).add(ex.id.rsplit("-q", 1)[1])
    assert all(len(phrasings) >= 2 for phrasings in by_relation.values()), by_relation


def test_substitutes_are_of_the_same_type_and_share_nothing_with_the_answer(shipped, same_sources):
    """A substitute is another answer of the same relation (a month for a month), never the answer or an alias."""
    answers = {r: {normalize_answer(f.entity[0]) for f in broad.BY_NAME[r].facts(r)} for r in META["relations"]}
    for ex in shipped:
        org, sub = ({normalize_answer(a) for a in answers_} for answers_ in (ex.org_answer, ex.sub_answer))
        assert not org & sub and normalize_answer(ex.sub_answer[0]) in answers[ex.relation], ex.id
        assert ex.org_context != ex.sub_context and ex.org_answer[0] in ex.org_context, ex.id


def test_shipped_rows_are_the_seeded_candidates(candidates):
    """Every shipped row is the candidate the seed-0 build makes (the model only chooses which are kept)."""
    by_id = {ex.id: ex for ex in candidates}
    assert all(by_id[ex.id] == ex for ex in read_jsonl(BROAD_ASSET))
    assert candidates.relation_counts() == {r: s["candidates"] for r, s in META["filter"]["relations"].items()}


def test_forbidden_relations_are_absent(shipped):
    assert not {"state_capital", "language", "official_language", "element", "chemical_symbol"} & set(broad.BY_NAME)
    assert not [ex.question for ex in shipped if FORBIDDEN.search(ex.question)]


def test_building_twice_gives_identical_bytes(tmp_path):
    def closed_book(data: ConflictDataset) -> ConflictDataset:  # a deterministic stand-in for the model
        return data.subset([i for i, ex in enumerate(data) if len(ex.question) % 5 and len(data) % 7])

    outputs = []
    for run in ("a", "b"):
        kept, stats = keep_memorised(build_candidates(3, RULE_ONLY), closed_book, RULE_ONLY)
        write_broad(kept, tmp_path / run / "broad.jsonl", {"seed": 3, "filter": stats})
        write_broad(build_passages(kept, 3, RULE_ONLY), tmp_path / run / "broad-passages.jsonl", {"seed": 3})
        outputs.append([(tmp_path / run / name).read_bytes() for name in
                        ("broad.jsonl", "broad.meta.json", "broad-passages.jsonl", "broad-passages.meta.json")])
    assert outputs[0] == outputs[1]
    other = build_candidates(4, RULE_ONLY)
    assert [ex.org_answer for ex in other] == [ex.org_answer for ex in build_candidates(3, RULE_ONLY)]
    assert other != build_candidates(3, RULE_ONLY)


def test_small_domains_keep_every_phrasing():
    counts = build_candidates(0, ["month_abbreviation", "weekday_abbreviation"]).relation_counts()
    assert counts == {"month_abbreviation": 11 * 3, "weekday_abbreviation": 7 * 3}  # May abbreviates to itself


def test_a_relation_short_of_memorised_items_is_one_line_naming_it():
    data = build_candidates(0, RULE_ONLY)
    with pytest.raises(SparekitError, match=r"relation 'opposite': only 0 of 144 candidates .* 40 needed") as err:
        keep_memorised(data, lambda d: d.subset([i for i, ex in enumerate(d) if ex.relation != "opposite"]),
                       RULE_ONLY)
    assert "--relations" in err.value.hint


def test_a_missing_source_package_is_one_line_naming_the_relation(monkeypatch):
    monkeypatch.setitem(sys.modules, "wordfreq", None)  # import fails as if not installed
    with pytest.raises(SparekitError, match="relation 'first_letter' needs the package wordfreq") as err:
        build_candidates(0, ["first_letter"])
    assert err.value.hint.startswith("pip install wordfreq")


@pytest.mark.parametrize("bad", ["The opposite of {subject} is {answer}.", "The opposite of {subject is {object}.",
                                 "{subject} {object} {subject}x {extra}"])
def test_a_malformed_template_is_one_line_naming_the_relation(bad):
    relation = replace(broad.BY_NAME["opposite"], templates=(bad, "{subject}: {object}."))
    with pytest.raises(SparekitError, match="relation 'opposite': malformed template"):
        check_relation(relation)
    with pytest.raises(SparekitError, match="relation 'opposite' has 1 question phrasing"):
        check_relation(replace(relation, questions=relation.questions[:1]))


def test_build_broad_cli_refuses_an_unknown_relation_before_loading_a_model(tmp_path, capsys):
    out = tmp_path / "b.jsonl"
    assert main(["data", "build-broad", "--out", str(out), "--relations", "capital,state_capital"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown relation 'state_capital'")
    assert not out.exists()


def test_passage_variant_wraps_each_fact_in_three_to_five_true_sentences(shipped):
    passages = load_dataset("broad-passages")
    assert [ex.id for ex in passages] == [ex.id for ex in shipped]
    assert json.loads(BROAD_PASSAGES_ASSET.with_name("broad-passages.meta.json").read_text())["rows"] == len(shipped)
    for ex, base in zip(passages, shipped):
        assert (ex.question, ex.org_answer, ex.sub_answer, ex.kind) == (base.question, base.org_answer,
                                                                        base.sub_answer, base.kind)
        assert ex.org_context.replace(base.org_context, base.sub_context) == ex.sub_context
        rest = ex.org_context.replace(base.org_context, " ")
        assert 3 <= len(re.findall(r"[.!?](?=\s|$)", rest)) <= 5, ex.id
        for alias in ex.org_answer + ex.sub_answer:
            assert f" {normalize_answer(alias)} " not in f" {normalize_answer(rest)} ", ex.id


def test_broad_is_a_dataset_name_everywhere(capsys):
    assert main(["data", "show", "--dataset", "broad", "--json", "--rows", "1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["dataset"] == "broad" and shown["examples"][0]["kind"]
    assert len(load_dataset("broad", limit=50, seed=1)) == 50


def test_build_broad_cli_names_a_relation_the_model_does_not_know(tmp_path, tiny_llama, monkeypatch, capsys):
    """A random model answers nothing closed-book: the build stops on the first relation short of items."""
    import sparekit.models

    monkeypatch.setattr(sparekit.models, "load_model", lambda *a, **k: tiny_llama)
    out = tmp_path / "b.jsonl"
    assert main(["data", "build-broad", "--out", str(out), "--relations", "weekday_abbreviation",
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "closed-book:" not in ln]  # no bar
    assert len(err) == 1 and err[0].startswith("error: relation 'weekday_abbreviation': only 0 of 21 candidates")
    assert "leave it out with --relations" in err[0] and not out.exists()
    assert list((tmp_path / "cache" / "21").glob("closed-*.jsonl"))  # the predictions are kept for a rerun
