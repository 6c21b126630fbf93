"""The broad conflict corpus (``broad``, ``broad-passages``): many relations in several kinds of knowledge.

Four relations of one kind teach a probe what those relations answer, not where an answer
comes from (issue 29). This corpus spreads the same conflict over geography (the default
dataset's four relations), numbers, the calendar, language, science and everyday
knowledge. Each relation has at least two question phrasings and two context templates;
its substitute is another answer of the same relation (a month for a month, a number for a
number) sharing no normalised name with the original.

Building has two steps. :func:`build_candidates` makes every candidate row from rules and
packages (byte-reproducible from the seed, no model). :func:`keep_memorised` keeps the rows
the model answers correctly closed-book with the project's standard three-shot prompt
(``memorised_subset``, demonstrations drawn from the candidates); further rounds re-check the
kept rows with demonstrations drawn from them. A relation left with fewer than its minimum
is an error naming it. The passage variant puts 3-5 true sentences about the subject
around the fact sentence, at a seeded position.
"""

from __future__ import annotations

import functools
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from sparekit.data import broad_facts as bf
from sparekit.data.dataset import ConflictDataset, ConflictExample, write_jsonl
from sparekit.data.default import (
    CONTINENTS, SOURCE_PACKAGES, _aliases, _capitalise, _entity_pool, _facts, _gives_away, _names_any, _phrase,
    _related_sentences, _sources, _substitute, clean_facts,
)
from sparekit.errors import SparekitError
from sparekit.utils.env import package_versions
from sparekit.utils.io import atomic_write_json

MAX_CANDIDATES = 300
FILTER_SEED, FILTER_K_SHOT = 42, 3
PACKAGES = (*SOURCE_PACKAGES, "inflect", "wordfreq", "pint")


@dataclass(frozen=True)
class Relation:
    """One relation of the corpus: where its facts come from and how they are asked and stated.

    ``min_memorised``: the fewest closed-book-correct rows a build may keep (60 where the domain and the
    model allow; less for small domains and for what the default model rarely knows); ``fill`` writes an
    answer inside a sentence ("the Gambia"); ``pool``: at most this many candidate rows.
    """

    name: str
    kind: str
    questions: tuple[str, ...]
    templates: tuple[str, ...]
    facts: Callable[[str], list[bf.BroadFact]]
    min_memorised: int = 60
    fill: Callable[[str], str] = str
    pool: int = MAX_CANDIDATES


@functools.cache
def _read_geography() -> tuple[dict, dict, dict]:
    return _facts(), _related_sentences(), _sources()[0]


def _geography_sources(relation: str) -> tuple[dict, dict, dict]:
    """The default dataset's facts and sentences and GeoNames' countries, read once for the geography relations."""
    for package in SOURCE_PACKAGES:
        bf.need(package, relation)
    return _read_geography()


def _geography(relation: str) -> list[bf.BroadFact]:
    """The default dataset's four relations, with its true sentences about each subject."""
    facts, related, _ = _geography_sources(relation)
    return [bf.BroadFact(key, subject, answers, entity,
                         tuple(t.replace("{S}", subject) for t in related[f"{relation}-{key}"][1])
                         + tuple(bf.spelling_sentences(subject)))
            for key, subject, answers, entity in clean_facts(facts[relation])]


def _capital_of(relation: str) -> list[bf.BroadFact]:
    """The capital relation read backwards: Paris -> France."""
    facts, _, countries = _geography_sources(relation)
    out = []
    for code, _, capital, _ in clean_facts(facts["capital"]):
        country = _aliases(countries[code]["name"])
        out.append(bf.BroadFact(code, capital[0], country, country, tuple(bf.spelling_sentences(capital[0]))))
    return out


def _city_continent(relation: str) -> list[bf.BroadFact]:
    """The continent of the default dataset's cities, through their country: Osaka -> Asia."""
    facts, related, countries = _geography_sources(relation)
    continent_of = {c["name"].strip(): CONTINENTS[c["continentcode"]] for c in countries.values()
                    if c["continentcode"] in CONTINENTS}
    return [bf.BroadFact(key, city, (continent_of[country[0]],), (continent_of[country[0]],),
                         tuple(t.replace("{S}", city) for t in related[f"city_country-{key}"][1])
                         + tuple(bf.spelling_sentences(city)))
            for key, city, country, _ in clean_facts(facts["city_country"]) if country[0] in continent_of]


def _table(table: dict[str, str | tuple[str, ...]], relation: str) -> list[bf.BroadFact]:
    """A hand table in the facts signature (no package to name when missing)."""
    return bf.table_facts(table)


RELATIONS = (
    Relation("capital", "geography", ("What is the capital of {subject}?", "Which city is the capital of {subject}?"),
             ("The capital of {subject} is {object}.", "{object} is the capital city of {subject}.",
              "{subject} is governed from its capital, {object}."), _geography, 40),
    Relation("continent", "geography", ("Which continent is {subject} in?", "On which continent is {subject}?"),
             ("{subject} is a country in {object}.", "{subject} is located in {object}."), _geography),
    Relation("currency", "geography", ("What is the currency of {subject}?", "Which currency is used in {subject}?"),
             ("The official currency of {subject} is the {object}.", "{subject} uses the {object} as its currency."),
             _geography, 30),
    Relation("city_country", "geography",
             ("Which country is the city of {subject} in?", "In which country is the city of {subject}?"),
             ("{subject} is a city in {object}.", "The city of {subject} is located in {object}."), _geography,
             fill=_phrase, pool=600),
    Relation("capital_of", "geography",
             ("Which country has {subject} as its capital?", "{subject} is the capital of which country?"),
             ("{subject} is the capital of {object}.", "{object} is governed from {subject}."), _capital_of, 40,
             fill=_phrase),
    Relation("city_continent", "geography",
             ("Which continent is the city of {subject} in?", "On which continent is the city of {subject}?"),
             ("The city of {subject} is in {object}.", "{subject} is a city in {object}."), _city_continent, pool=250),
    Relation("digits", "numbers",
             ("How is {subject} written in digits?", "What is the number {subject} written in digits?"),
             ("In digits, {subject} is written {object}.", "The number {subject} is written {object} in digits."),
             bf.digits_facts, pool=450),
    Relation("product", "numbers",
             ("What is the product of {subject}?", "What do you get when you multiply {subject}?"),
             ("The product of {subject} is {object}.", "Multiplying {subject} gives {object}."),
             partial(bf.pair_facts, low=2, high=12, op=lambda a, b: a * b), 10),
    Relation("month_abbreviation", "calendar",
             ("Which month is abbreviated as {subject}?", "What month does the abbreviation {subject} stand for?",
              "Which month is written {subject} for short?"),
             ("{subject} is short for {object}.", "The abbreviation {subject} stands for {object}."),
             bf.month_abbreviation_facts, 10),
    Relation("weekday_abbreviation", "calendar",
             ("What day is abbreviated as {subject}?", "Which day of the week is abbreviated {subject}?",
              "What day does the abbreviation {subject} stand for?"),
             ("{subject} is short for {object}.", "The abbreviation {subject} stands for {object}."),
             bf.weekday_facts, 4),
    Relation("holiday_month", "calendar", ("What month is {subject} in?", "In which month is {subject}?"),
             ("{subject} is in {object}.", "{subject} falls in {object} every year."), partial(_table, bf.HOLIDAYS), 8),
    Relation("opposite", "language", ("What is the opposite of {subject}?", "What is the antonym of {subject}?"),
             ("The opposite of {subject} is {object}.", "{subject} is the antonym of {object}."),
             partial(_table, bf.pairs_both_ways(bf.OPPOSITES)), 40),
    Relation("first_letter", "language",
             ("What is the first letter of the word {subject}?", "Which letter does the word {subject} start with?"),
             ("The word {subject} starts with the letter {object}.", "The first letter of {subject} is {object}."),
             bf.first_letter_facts, pool=400),
    Relation("unit_symbol", "science",
             ("What is the symbol for {subject}?", "What is the unit symbol of the {subject}?"),
             ("The symbol for the {subject} is {object}.", "The {subject} is written {object} for short."),
             bf.unit_symbol_facts, 8),
    Relation("si_unit", "science", ("What is the SI unit of {subject}?", "In which SI unit is {subject} measured?"),
             ("The SI unit of {subject} is the {object}.", "{subject} is measured in units called {object}."),
             partial(_table, bf.SI_UNITS), 5),
    Relation("colour", "everyday", ("What colour is {subject}?", "What is the colour of {subject}?"),
             ("{subject} is {object}.", "The colour of {subject} is {object}."), partial(_table, bf.COLOURS), 15),
)
BY_NAME = {r.name: r for r in RELATIONS}


def select(names: list[str] | None) -> tuple[Relation, ...]:
    """The relations called ``names`` (all when None), or one line naming the unknown one."""
    if names is None:
        return RELATIONS
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SparekitError(f"unknown relation {unknown[0]!r}", f"choose from {', '.join(BY_NAME)}")
    return tuple(BY_NAME[n] for n in names)


def _fields(template: str) -> set[str]:
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError:  # an unmatched brace
        return {"?"}


def check_relation(relation: Relation) -> None:
    """Two phrasings and two templates, each using exactly the fields it is filled with, or one line saying so."""
    where = f"relation {relation.name!r}"
    if len(relation.questions) < 2 or len(relation.templates) < 2:
        raise SparekitError(f"{where} has {len(relation.questions)} question phrasing(s) and "
                            f"{len(relation.templates)} context template(s)", "give it at least two of each")
    for text, fields in [(q, {"subject"}) for q in relation.questions] + [(t, {"subject", "object"})
                                                                          for t in relation.templates]:
        if _fields(text) != fields:
            raise SparekitError(f"{where}: malformed template {text!r}",
                                f"use exactly {' and '.join('{' + f + '}' for f in sorted(fields))}, braces balanced")


Row = tuple[ConflictExample, bf.BroadFact]


def _combos(relation: Relation, facts: list[bf.BroadFact], rng: random.Random) -> list[tuple[bf.BroadFact, int]]:
    """(fact, phrasing) pairs: every phrasing of every fact where that fits in the relation's pool (small domains
    such as months), else one seeded phrasing per fact, then a seeded sample of the pool's size in fact order."""
    n, size = len(relation.questions), relation.pool
    if len(facts) * n <= size:
        return [(f, q) for f in facts for q in range(n)]
    combos = [(f, rng.randrange(n)) for f in facts]
    return combos if len(combos) <= size else [combos[i] for i in sorted(rng.sample(range(len(combos)), size))]


def _relation_rows(relation: Relation, seed: int) -> list[Row]:
    """The candidate rows of one relation, each with the true sentences about its subject."""
    check_relation(relation)
    facts = [f for f in relation.facts(relation.name) if not _gives_away(f.subject, f.entity)]
    pool = _entity_pool([f[:4] for f in facts])
    rows = []
    for fact, q in _combos(relation, facts, random.Random(f"{seed}:{relation.name}")):
        rng = random.Random(f"{seed}:{relation.name}:{fact.key}:{q}")
        template = rng.choice(relation.templates)
        sub = _substitute(fact.answers, [e for e in pool if not _gives_away(fact.subject, e)], rng)  # not "4 and 4": 4

        def context(answer: str) -> str:
            return _capitalise(template.format(subject=fact.subject, object=relation.fill(answer)))

        rows.append((ConflictExample(
            id=f"{relation.name}-{fact.key}-q{q}",
            question=_capitalise(relation.questions[q].format(subject=fact.subject)),
            org_context=context(fact.answers[0]), org_answer=fact.answers, sub_context=context(sub[0]), sub_answer=sub,
            relation=relation.name, kind=relation.kind), fact))
    return rows


def _candidate_rows(relations: tuple[Relation, ...], seed: int) -> list[Row]:
    return [row for relation in relations for row in _relation_rows(relation, seed)]


def build_candidates(seed: int = 0, names: list[str] | None = None) -> ConflictDataset:
    """Every candidate row of the relations ``names`` (all by default): rules and packages only, no model."""
    return ConflictDataset([ex for ex, _ in _candidate_rows(select(names), seed)], "broad")


def keep_memorised(candidates: ConflictDataset, closed_book: Callable[[ConflictDataset], ConflictDataset],
                   names: list[str] | None = None, rounds: int = 1) -> tuple[ConflictDataset, dict]:
    """The rows ``closed_book`` keeps, re-run on the kept rows up to ``rounds`` times or until stable (their
    demonstrations change with them), and per-relation statistics; a relation below its minimum is one error
    line naming it."""
    kept, first, stable, done = candidates, None, False, 0
    while not stable and done < rounds:
        answered = closed_book(kept)
        first, done = answered.relation_counts() if first is None else first, done + 1
        stable, kept = len(answered) == len(kept), answered
    counts, total = kept.relation_counts(), candidates.relation_counts()
    for relation in select(names):
        if counts.get(relation.name, 0) < relation.min_memorised:
            raise SparekitError(f"relation {relation.name!r}: only {counts.get(relation.name, 0)} of "
                                f"{total.get(relation.name, 0)} candidates are answered correctly closed-book, "
                                f"{relation.min_memorised} needed",
                                f"leave it out with --relations, or give {relation.name} more candidates")
    stats = {r.name: {"kind": r.kind, "candidates": total.get(r.name, 0), "memorised": counts.get(r.name, 0),
                      "closed_book_accuracy": round(first.get(r.name, 0) / total[r.name], 4)} for r in select(names)}
    return kept, {"rounds": done, "stable": stable, "relations": stats}


def build_passages(dataset: ConflictDataset, seed: int = 0, names: list[str] | None = None) -> ConflictDataset:
    """``dataset``'s rows with paragraph contexts: the fact sentence among 3-5 true sentences about its subject,
    none naming the original or the substituted answer, at a seeded position."""
    facts = {ex.id: fact for ex, fact in _candidate_rows(select(names), seed)}
    rows = []
    for ex in dataset:
        fact = facts[ex.id]
        pool = [_capitalise(s) for s in fact.related  # the subject may contain an answer: Guinea-Bissau, Bissau
                if not _names_any(s.replace(fact.subject, " ").replace(bf.bare(fact.subject), " "),
                                  ex.org_answer + ex.sub_answer)]
        if len(pool) < 3:
            raise SparekitError(f"relation {ex.relation!r}: {ex.id} has only {len(pool)} true sentences for a passage",
                                f"give {ex.relation} more sentences about its subjects")
        rng = random.Random(f"{seed}:passage:{ex.id}")
        chosen = rng.sample(pool, rng.randint(3, min(5, len(pool))))
        at = rng.randint(0, len(chosen))
        rows.append(replace(ex, org_context=" ".join(chosen[:at] + [ex.org_context] + chosen[at:]),
                            sub_context=" ".join(chosen[:at] + [ex.sub_context] + chosen[at:])))
    return ConflictDataset(rows, "broad-passages")


def write_broad(dataset: ConflictDataset, path: str | Path, meta: dict) -> None:
    """Write the rows and, beside them, ``<name>.meta.json``: counts, kinds, source versions and ``meta``."""
    path = Path(path)
    write_jsonl(dataset, path)
    kinds = {ex.relation: ex.kind for ex in dataset}
    atomic_write_json(path.with_name(path.name.split(".")[0] + ".meta.json"),
                      {"rows": len(dataset), "relations": dataset.relation_counts(), "kinds": kinds,
                       "sources": package_versions(PACKAGES), **meta})
