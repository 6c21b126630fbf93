"""Facts of the broad corpus's relations, from rules, the standard library and PyPI packages.

Every generator returns ``BroadFact`` rows in a fixed order: the item key, the subject as it
reads in a question, the answer's aliases, the aliases that may stand in another item's
context, and true sentences about the subject (the passage variant's filler). Hand-typed
tables are short (a few dozen entries at most); everything longer comes from a rule
(numbers, the calendar) or a package whose version the build records (``inflect`` for
number words, ``wordfreq`` for common words, ``pint`` for unit symbols, and the geography
packages of :mod:`sparekit.data.default`).
"""

from __future__ import annotations

import calendar
import functools
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

from sparekit.data.dataset import normalize_answer
from sparekit.errors import SparekitError


class BroadFact(NamedTuple):
    key: str
    subject: str
    answers: tuple[str, ...]
    entity: tuple[str, ...]
    related: tuple[str, ...]


def need(package: str, relation: str) -> ModuleType:
    """Import a source package, or one line naming the relation that needs it and the fix."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise SparekitError(f"relation {relation!r} needs the package {package}",
                            f"pip install {package}, or leave {relation} out with --relations") from None


def bare(subject: str) -> str:
    """The subject without a leading article: "the sky" -> "sky"."""
    return subject.removeprefix("the ").removeprefix("a ").removeprefix("an ")


def spelling_sentences(subject: str) -> list[str]:
    """True sentences about how a name is spelled: filler any subject has."""
    word = bare(subject)
    letters = [c for c in word.lower() if c.isalpha()]
    if not letters:
        return []
    vowels = sum(c in "aeiou" for c in letters)
    return [f"{word} is spelled with {len(letters)} letters.",
            f"{word} ends with the letter {letters[-1].upper()}.",
            f"{word} starts with the letter {letters[0].upper()}.",
            f"{word} contains {vowels} vowel{'s' if vowels != 1 else ''}.",
            f"Spelled backwards, {word} reads {''.join(letters[::-1])}."]


@functools.cache
def _number_words(n: int, relation: str) -> str:
    """``inflect``'s words for ``n`` ("forty-two"); cached, as every pair of numbers asks again."""
    return need("inflect", relation).engine().number_to_words(n)


def _roman(n: int) -> str:
    out = ""
    for value, numeral in ((1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"),
                           (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")):
        while n >= value:
            out, n = out + numeral, n - value
    return out


def number_sentences(n: int, written: str, relation: str) -> list[str]:
    """True sentences about the number ``n``, written as ``written`` (digits or words)."""
    words = _number_words(n, relation)
    return [f"{written} is an {'even' if n % 2 == 0 else 'odd'} number.", f"{written} squared is {n * n}.",
            f"{written} in Roman numerals is {_roman(n)}.",
            f"{written} written in words is {words}." if written != words else f"{written} is written {n} in digits.",
            f"{written} has {len(str(n))} digit{'s' if n > 9 else ''}.", f"{written} times ten is {10 * n}.",
            f"{written} is {'' if _is_prime(n) else 'not '}a prime number."]


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))


def _number_answer(n: int, relation: str) -> tuple[str, ...]:
    return (str(n), _number_words(n, relation))


def pair_facts(relation: str, low: int, high: int, op: Callable[[int, int], int]) -> list[BroadFact]:
    """``a op b`` for every pair in [low, high]², the subject written "a and b"."""
    facts = []
    for a in range(low, high + 1):
        for b in range(low, high + 1):
            answer = _number_answer(op(a, b), relation)
            facts.append(BroadFact(f"{a}-{b}", f"{a} and {b}", answer, answer,
                                   tuple(dict.fromkeys(number_sentences(a, str(a), relation)
                                                        + number_sentences(b, str(b), relation)))))
    return facts


def digits_facts(relation: str) -> list[BroadFact]:
    """"forty-two" -> 42, over 1..999 (number words from ``inflect``)."""
    facts = []
    for n in range(1, 1000):
        words = _number_words(n, relation)
        facts.append(BroadFact(str(n), words, (str(n),), (str(n),), tuple(number_sentences(n, words, relation))))
    return facts


def first_letter_facts(relation: str) -> list[BroadFact]:
    """Common English words (``wordfreq``'s top 3,000) -> their first letter; no word starting with "a",
    which normalises to the article and could never be matched."""
    words = need("wordfreq", relation).top_n_list("en", 3000)
    facts = []
    for word in words:
        if len(word) >= 4 and word.isascii() and word.isalpha() and normalize_answer(word[0]):
            letter = (word[0].upper(),)
            facts.append(BroadFact(word, word, letter, letter, tuple(spelling_sentences(word))))
    return facts


def month_abbreviation_facts(relation: str) -> list[BroadFact]:
    """Jan -> January (May, its own abbreviation, is left out as self-answering)."""
    return [BroadFact(calendar.month_abbr[m], calendar.month_abbr[m], (calendar.month_name[m],),
                      (calendar.month_name[m],), tuple(spelling_sentences(calendar.month_abbr[m])))
            for m in range(1, 13)]


def weekday_facts(relation: str) -> list[BroadFact]:
    """Mon -> Monday."""
    return [BroadFact(calendar.day_abbr[d], calendar.day_abbr[d], (calendar.day_name[d],),
                      (calendar.day_name[d],), tuple(spelling_sentences(calendar.day_abbr[d]))) for d in range(7)]


def unit_symbol_facts(relation: str) -> list[BroadFact]:
    """Unit name -> its symbol, as ``pint``'s registry writes it."""
    registry = need("pint", relation).UnitRegistry()
    facts = []
    for unit in UNITS:
        symbol = (str(registry.get_symbol(unit)),)
        facts.append(BroadFact(unit, unit, symbol, symbol, tuple(spelling_sentences(unit))))
    return facts


def table_facts(table: dict[str, str | tuple[str, ...]]) -> list[BroadFact]:
    """A short hand table (subject -> answer or aliases) as facts."""
    facts = []
    for subject, answer in table.items():
        aliases = (answer,) if isinstance(answer, str) else answer
        facts.append(BroadFact(normalize_answer(subject).replace(" ", "_"), subject, aliases, aliases,
                               tuple(spelling_sentences(subject))))
    return facts


def pairs_both_ways(pairs: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """``{a: b, b: a}`` for every pair: an opposite is the opposite of its opposite."""
    return {**dict(pairs), **{b: a for a, b in pairs}}


UNITS = ("metre", "kilometre", "centimetre", "millimetre", "gram", "kilogram", "milligram", "second", "minute", "hour",
         "litre", "millilitre", "newton", "joule", "watt", "volt", "ampere", "ohm", "hertz", "pascal", "kelvin",
         "mole", "candela", "coulomb", "tesla", "farad", "kilowatt", "kilojoule", "megahertz", "kilohertz")
OPPOSITES = (("hot", "cold"), ("big", "small"), ("fast", "slow"), ("strong", "weak"), ("early", "late"),
             ("happy", "sad"), ("up", "down"), ("light", "dark"), ("open", "closed"), ("rich", "poor"),
             ("hard", "soft"), ("wet", "dry"), ("full", "empty"), ("high", "low"), ("long", "short"),
             ("thick", "thin"), ("clean", "dirty"), ("loud", "quiet"), ("good", "bad"), ("right", "wrong"),
             ("true", "false"), ("win", "lose"), ("buy", "sell"), ("push", "pull"), ("in", "out"), ("on", "off"),
             ("yes", "no"), ("day", "night"), ("black", "white"), ("love", "hate"), ("north", "south"),
             ("east", "west"), ("top", "bottom"), ("first", "last"), ("always", "never"), ("alive", "dead"))
HOLIDAYS = {"Christmas": "December", "Halloween": "October", "Valentine's Day": "February",
            "New Year's Day": "January", "April Fools' Day": "April", "Saint Patrick's Day": "March",
            "the Fourth of July": "July", "Guy Fawkes Night": "November", "Boxing Day": "December",
            "New Year's Eve": "December", "Bastille Day": "July", "Canada Day": "July", "Australia Day": "January",
            "Anzac Day": "April", "May Day": "May", "Groundhog Day": "February", "Cinco de Mayo": "May",
            "Remembrance Day": "November", "International Women's Day": "March", "Earth Day": "April",
            "Christmas Eve": "December", "Thanksgiving in the United States": "November"}
SI_UNITS = {"length": "metre", "mass": "kilogram", "time": "second", "electric current": "ampere",
            "temperature": "kelvin", "amount of substance": "mole", "luminous intensity": "candela",
            "force": "newton", "energy": "joule", "power": "watt", "pressure": "pascal", "frequency": "hertz",
            "electric charge": "coulomb", "voltage": "volt", "electrical resistance": "ohm", "capacitance": "farad",
            "magnetic flux": "weber", "magnetic flux density": "tesla", "inductance": "henry",
            "radioactivity": "becquerel", "illuminance": "lux", "luminous flux": "lumen", "plane angle": "radian"}
COLOURS = {"grass": "green", "the sky": "blue", "snow": "white", "coal": "black", "a banana": "yellow",
           "a tomato": "red", "blood": "red", "milk": "white", "a lemon": "yellow", "a carrot": "orange",
           "chocolate": "brown", "a strawberry": "red", "a cucumber": "green", "a lime": "green",
           "a pumpkin": "orange", "a cherry": "red", "charcoal": "black", "a crow": "black", "the sun": "yellow",
           "the sea": "blue", "a frog": "green", "a polar bear": "white", "an egg yolk": "yellow", "soot": "black",
           "a flamingo": "pink", "an aubergine": "purple", "a lettuce": "green", "a fire engine": "red",
           "cream": "white", "a swan": "white"}
