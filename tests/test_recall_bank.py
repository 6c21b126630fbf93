"""The recall detector's demonstration bank: solved questions drawn by the question's form, never its subject."""

from __future__ import annotations

from sparekit.data import ConflictDataset, ConflictExample
from sparekit.probes.recall_bank import DemonstrationBank, default_bank


def _bank_items() -> ConflictDataset:
    rows = [("continent", f"On which continent is {c}?", a) for c, a in
            [("France", "Europe"), ("Peru", "South America"), ("Kenya", "Africa"), ("Japan", "Asia"),
             ("Chile", "South America")]]
    rows += [("capital", f"What is the capital of {c}?", a) for c, a in
             [("France", "Paris"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Japan", "Tokyo"), ("Chile", "Santiago")]]
    rows += [("city_continent", "On which continent is the city of Lyon?", "Europe")]
    return ConflictDataset([ConflictExample(id=f"b{i}", question=q, org_context="c", org_answer=(a,), sub_context="c",
                                            sub_answer=("x",), relation=r) for i, (r, q, a) in enumerate(rows)], "b")


def test_the_bank_draws_by_form_never_the_subject_and_never_a_held_out_relation():
    bank = DemonstrationBank.from_dataset(_bank_items(), min_count=3)
    shots = bank.nearest("On which continent is the city of Kyoto?", 3)
    assert len(shots) == 3 and all("continent" in s.question for s in shots)
    assert len({s.answer for s in shots}) == 3  # distinct answers: no one answer primed
    # the subject (Japan) is never drawn, so neither is its answer (Tokyo)
    capitals = bank.nearest("What is the capital of Japan?", 5)
    assert capitals and all("Japan" not in s.question and s.answer != "Tokyo" for s in capitals)
    assert all(s.question.startswith("What is the capital") for s in bank.nearest("What is the capital of Japan?", 3))
    held_out = bank.without(["continent", "city_continent"])
    assert all("continent" not in s.question for s in held_out.nearest("On which continent is Japan?", 3))
    assert bank.nearest("How many legs does a spider have?", 3) == []  # no template word: nothing from the bank
    assert bank.nearest("On which continent is the city of Kyoto?", 3) == shots  # ties drawn reproducibly



def test_the_shipped_bank_is_the_broad_corpus_and_names_no_subject_of_a_question_outside_it():
    bank = default_bank()
    assert len(bank.shots) == len(bank.relations) > 1000 and len(set(bank.relations)) >= 16
    shots = bank.nearest("What is the capital of the state of Texas?", 3)
    assert len(shots) == 3 and all("capital" in s.question and "Texas" not in s.question for s in shots)
