"""Phrase pairs generated offline from CLDR data (Babel) and num2words, in any supported language pair.

    python -m apps.translate fit --data.dataset=cldr --data.source_lang=en --data.target_lang=de

The translation app's offline corpus: every pair is the same value written by two locales, so the
"translation" is exact and needs real reordering and agreement, not a word-for-word lookup:

- dates in several formats       ``Tuesday, March 5, 2024``        -> ``mardi 5 mars 2024``
- spelled-out numbers            ``three hundred and twenty-one``  -> ``dreihunderteinundzwanzig``
- unit phrases                   ``1,234 kilometers``              -> ``1 234 kilomètres``
- relative times                 ``3 days ago``                    -> ``il y a 3 jours``
- lists of country names         ``France, Germany, or Spain``     -> ``France, Allemagne ou Espagne``
- language (and locale) names    ``Serbian (Latin, Serbia)``       -> ``serbe (latin, Serbie)``

Names come from a fixed lexicon (~260 territories, ~300 languages) and appear in many lists, so a
phrase of the test split is new while its words were seen in training. ``generate_pairs`` is
deterministic for a seed and returns each source phrase once, so splitting the pairs by index keeps
train, val and test disjoint by source phrase.
"""

from __future__ import annotations

import datetime
import random
import unicodedata
from collections.abc import Callable
from functools import cache

from babel import Locale, UnknownLocaleError, localedata
from babel.dates import format_date, format_timedelta
from babel.lists import format_list
from babel.units import format_unit
from num2words import num2words

from datamodules.base import DataError

# Share of each phrase family in the corpus; families too small to fill theirs leave it to the others.
FAMILIES = {
    "date": 0.30,
    "number": 0.25,
    "unit": 0.15,
    "relative_time": 0.05,
    "countries": 0.15,
    "languages": 0.10,
}
DATE_FORMATS = ("full", "long", "medium")
UNITS = (
    "length-kilometer",
    "length-meter",
    "length-centimeter",
    "length-mile",
    "mass-kilogram",
    "mass-gram",
    "volume-liter",
    "duration-hour",
    "duration-minute",
    "duration-day",
    "duration-week",
    "duration-month",
    "duration-year",
    "temperature-celsius",
    "speed-kilometer-per-hour",
    "area-square-meter",
    "digital-gigabyte",
    "energy-kilocalorie",
)
# Seconds per unit, as Babel's format_timedelta counts them.
TIME_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800, "month": 2592000, "year": 31536000}
FIRST_DAY, LAST_DAY = datetime.date(1900, 1, 1).toordinal(), datetime.date(2099, 12, 31).toordinal()


def clean(text: str) -> str:
    """NFC text with single ASCII spaces: CLDR separates thousands and units with (narrow) no-break
    spaces, which a reader types as plain spaces."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def check_language(lang: str, option: str) -> Locale:
    """The Babel locale of ``lang``, or a ``DataError`` if Babel or num2words cannot write it."""
    try:
        locale = Locale.parse(lang)
        num2words(21, lang=lang)
    except (UnknownLocaleError, ValueError, TypeError, NotImplementedError) as err:
        detail = f" ({err})" if str(err) else ""
        raise DataError(
            f"{option} {lang}: not a language the cldr generator supports; it needs Babel locale data and "
            f"num2words{detail}; e.g. en, fr, de, es, it, pt, nl"
        ) from None
    return locale


def check_pair(source: str, target: str) -> None:
    """A ``DataError`` unless both languages are supported and differ."""
    check_language(source, "--data.source_lang")
    check_language(target, "--data.target_lang")
    if source == target:
        raise DataError(f"--data.source_lang and --data.target_lang are both {source}: nothing to translate")


@cache
def lexicon(source: str, target: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[str]]:
    """(country names, language names, locale identifiers) both locales name."""
    src, tgt = Locale.parse(source), Locale.parse(target)
    territories = sorted(
        (src.territories[code], tgt.territories[code])
        for code in src.territories
        if len(code) == 2 and code.isalpha() and code in tgt.territories
    )
    identifiers = sorted(localedata.locale_identifiers())
    codes = sorted({Locale.parse(i).language for i in identifiers})
    languages = [(src.languages[c], tgt.languages[c]) for c in codes if c in src.languages and c in tgt.languages]
    return territories, languages, identifiers


class PhraseFamilies:
    """One method per family, each drawing a random value and writing it in both languages."""

    def __init__(self, source: str, target: str, rng: random.Random) -> None:
        self.source, self.target, self.rng = source, target, rng
        self.country_names, self.language_names, self.identifiers = lexicon(source, target)

    def both(self, write: Callable[[str], str]) -> tuple[str, str]:
        return clean(write(self.source)), clean(write(self.target))

    def date(self) -> tuple[str, str]:
        day = datetime.date.fromordinal(self.rng.randint(FIRST_DAY, LAST_DAY))
        form = self.rng.choice(DATE_FORMATS)
        return self.both(lambda lang: format_date(day, form, locale=lang))

    def number(self) -> tuple[str, str]:
        # Mostly below 1000, where the word order differs most (German "einundzwanzig": one-and-twenty).
        n = self.rng.choice([self.rng.randint(0, 999), self.rng.randint(0, 9999)])
        to = "ordinal" if self.rng.random() < 0.2 else "cardinal"
        return self.both(lambda lang: num2words(n, lang=lang, to=to))

    def unit(self) -> tuple[str, str]:
        value = self.rng.choice([self.rng.randint(1, 20), self.rng.randint(1, 5000)])
        unit = self.rng.choice(UNITS)
        return self.both(lambda lang: format_unit(value, unit, length="long", locale=lang))

    def relative_time(self) -> tuple[str, str]:
        unit, seconds = self.rng.choice(list(TIME_UNITS.items()))
        delta = datetime.timedelta(seconds=self.rng.choice([-1, 1]) * self.rng.randint(1, 59) * seconds)
        return self.both(lambda lang: format_timedelta(delta, threshold=1, add_direction=True, locale=lang))

    def countries(self) -> tuple[str, str]:
        names = self.rng.sample(self.country_names, self.rng.randint(1, 3))
        style = self.rng.choice(["standard", "or"])
        return (
            clean(format_list([s for s, _ in names], style, self.source)),
            clean(format_list([t for _, t in names], style, self.target)),
        )

    def languages(self) -> tuple[str, str]:
        if self.rng.random() < 0.4:  # a locale's display name, e.g. "French (Canada)"
            locale = Locale.parse(self.rng.choice(self.identifiers))
            return self.both(lambda lang: locale.get_display_name(lang) or "")
        names = self.rng.sample(self.language_names, self.rng.randint(1, 2))
        return (
            clean(format_list([s for s, _ in names], locale=self.source)),
            clean(format_list([t for _, t in names], locale=self.target)),
        )


def generate_pairs(size: int, source: str = "en", target: str = "fr", seed: int = 0) -> list[tuple[str, str]]:
    """``size`` (source, target) phrase pairs with distinct source phrases, in a seeded random order.

    The same arguments give the same list on every machine with the same Babel and num2words.
    """
    check_pair(source, target)
    if size < 1:
        raise DataError(f"--data.size {size}: must be at least 1")
    rng = random.Random(f"cldr-{source}-{target}-{seed}")  # str seeds hash the same on every run
    families = PhraseFamilies(source, target, rng)
    writers = [getattr(families, name) for name in FAMILIES]
    weights = list(FAMILIES.values())
    pairs: dict[str, str] = {}
    attempts = 0
    while len(pairs) < size:
        attempts += 1
        if attempts > 20 * size + 1000:
            raise DataError(f"--data.size {size}: the cldr generator found only {len(pairs)} distinct phrases")
        src, tgt = rng.choices(writers, weights)[0]()
        if src and tgt:
            pairs.setdefault(src, tgt)  # a source phrase once, with its first translation
    return list(pairs.items())
