"""The mini-web: a small, fully offline web of pages generated from the fact tables.

Two kinds of page:
  entity pages  one per entity (https://miniweb.local/<kind>/<slug>): a few sentences of prose,
                a "Facts" section of "Label: value" lines, and links to related pages;
  list pages    https://miniweb.local/list/<slug>: a set of entities ("Countries of South
                America") that links to each member but states none of their attributes.

A broad task therefore needs the set from a list page and every attribute from the member's own
page. The "Facts" lines are the single place a value is written in its canonical form (plain
integers and decimals, codes as ISO writes them); the task generator reads the same lines, so a
gold cell always appears verbatim on its entity page.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from wideseek_exp import WideseekError
from wideseek_exp.buildinfo import BuildResult, build_folder, fingerprint
from wideseek_exp.search.base import Page
from wideseek_exp.search.facts import (
    Airport,
    City,
    Country,
    Currency,
    Element,
    Facts,
    Language,
    UsState,
    load_facts,
    package_versions,
)

# Bump whenever page text or URLs change: it is the corpus fingerprint's only code input.
CORPUS_VERSION = "miniweb-1"
BASE_URL = "https://miniweb.local"
PAGES_FILE = "pages.jsonl"
MANIFEST_FILE = "manifest.json"

# City list pages come at these population floors; a higher floor gets its own list page only
# when the list below it is long (so "cities of China" has a bounded subset a task can ask for).
CITY_LIST_FLOORS = (500_000, 1_000_000, 2_000_000, 5_000_000)
CITY_LIST_SPLIT_ABOVE = 20

# Discovery eras for "elements discovered between ..." lists: (first year, last year, phrase).
DISCOVERY_ERAS = (
    (0, 1749, "before 1750"),
    (1750, 1799, "between 1750 and 1799"),
    (1800, 1849, "between 1800 and 1849"),
    (1850, 1899, "between 1850 and 1899"),
    (1900, 1949, "between 1900 and 1949"),
    (1950, 9999, "in 1950 or later"),
)
STATEHOOD_ERAS = (
    (0, 1799, "before 1800"),
    (1800, 1849, "between 1800 and 1849"),
    (1850, 1899, "between 1850 and 1899"),
    (1900, 9999, "in 1900 or later"),
)

# Region names that read with an article ("the Caribbean").
NEEDS_THE = {"Americas", "Caribbean"}


@dataclass(frozen=True)
class EntityPage:
    url: str
    kind: str  # country, element, us_state, airport, city, currency, language
    name: str  # the entity's name as a table would key it
    title: str
    prose: str
    facts: tuple[tuple[str, str], ...]  # ("Capital", "Paris"), in display order
    links: tuple[tuple[str, str], ...]  # (anchor text, url)

    def fact(self, label: str) -> str | None:
        return dict(self.facts).get(label)

    def text(self) -> str:
        lines = [self.title, "", self.prose, "", "Facts"]
        lines += [f"{label}: {value}" for label, value in self.facts]
        if self.links:
            lines += ["", "Related pages"] + [markdown_link(anchor, url) for anchor, url in self.links]
        return "\n".join(lines)


@dataclass(frozen=True)
class ListPage:
    url: str
    slug: str
    category: str  # what kind of set it is, e.g. "countries-by-region"; tasks pick sets by it
    title: str
    description: str  # the set in words, e.g. "countries and territories of South America"
    members: tuple[tuple[str, str], ...]  # (name, entity url), sorted by name
    related: tuple[tuple[str, str], ...] = ()

    def text(self) -> str:
        noun = "entry" if len(self.members) == 1 else "entries"
        lines = [
            self.title,
            "",
            f"This list names {len(self.members)} {noun}, the {self.description}. Each entry links to its own "
            "page, which gives the facts about it.",
            "",
        ]
        lines += [markdown_link(name, url) for name, url in self.members]
        if self.related:
            lines += ["", "Related lists"] + [markdown_link(anchor, url) for anchor, url in self.related]
        return "\n".join(lines)


@dataclass(frozen=True)
class MiniWeb:
    entities: dict[str, EntityPage]  # by url
    lists: dict[str, ListPage]  # by url

    def list_by_slug(self, slug: str) -> ListPage | None:
        return self.lists.get(list_url(slug))


# ---------------------------------------------------------------- formatting helpers


def slugify(text: str) -> str:
    """Lowercase ASCII words joined by hyphens ("São Tomé" -> "sao-tome")."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    # a name with no Latin letters at all still needs a stable, unique slug
    return slug or "x" + hashlib.sha256(text.encode()).hexdigest()[:10]


def markdown_link(anchor: str, url: str) -> str:
    """A bullet with a markdown link; brackets in the anchor are escaped so the link stays one link."""
    anchor = anchor.replace("[", "\\[").replace("]", "\\]")
    return f"- [{anchor}]({url})"


def entity_url(kind: str, slug: str) -> str:
    return f"{BASE_URL}/{kind.replace('_', '-')}/{slug}"


def list_url(slug: str) -> str:
    return f"{BASE_URL}/list/{slug}"


def plain_number(value: float | int) -> str:
    """The canonical number form of the corpus and the gold tables: no separators, no units,
    integers without a decimal point, decimals without trailing zeros."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(round(float(value), 6))


def approx_words(value: float) -> str:
    """A rounded, human phrasing for prose ("66.1 million"), deliberately not the fact form."""
    if value >= 1e9:
        return f"{value / 1e9:.1f} billion"
    if value >= 1e6:
        return f"{value / 1e6:.1f} million"
    if value >= 1e4:
        return f"{round(value, -3):,.0f}"
    return f"{value:,.0f}"


def join_names(names: Iterable[str], limit: int = 6) -> str:
    names = list(names)
    if len(names) > limit:
        rest = len(names) - limit
        return ", ".join(names[:limit]) + f" and {rest} other{'s' if rest > 1 else ''}"
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def with_the(place: str) -> str:
    return f"the {place}" if place in NEEDS_THE else place


def pick(options: list[str] | tuple[str, ...], key: str) -> str:
    """Choose a template by a stable hash of the page key (never Python's salted hash())."""
    digest = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return options[digest % len(options)]


# ---------------------------------------------------------------- URLs of every entity


def country_url(name: str) -> str:
    return entity_url("country", slugify(name))


def element_url(e: Element) -> str:
    return entity_url("element", slugify(e.name))


def state_url(s: UsState) -> str:
    return entity_url("us_state", slugify(s.name))


def airport_url(a: Airport) -> str:
    return entity_url("airport", slugify(f"{a.name} {a.iata}"))


def city_url(c: City) -> str:
    return entity_url("city", slugify(f"{c.name} {c.country}"))


def currency_url(code: str) -> str:
    return entity_url("currency", code.lower())


def language_url(lang: Language) -> str:
    return entity_url("language", slugify(lang.name))


# ---------------------------------------------------------------- list slugs (shared by pages and links)


def region_list_slug(place: str) -> str:
    return f"countries-of-{slugify(place)}"


def neighbours_list_slug(country: str) -> str:
    return f"countries-bordering-{slugify(country)}"


def currency_users_slug(code: str) -> str:
    return f"countries-using-{code.lower()}"


def language_users_slug(lang: Language) -> str:
    return f"countries-where-{slugify(lang.name)}-is-official"


def group_slug(group: int) -> str:
    return f"elements-of-group-{group}"


def period_slug(period: int) -> str:
    return f"elements-of-period-{period}"


def block_slug(block: str) -> str:
    return f"elements-of-the-{block}-block"


def airports_slug(country: str) -> str:
    return f"airports-in-{slugify(country)}"


def cities_slug(country: str, floor: int) -> str:
    base = f"cities-in-{slugify(country)}"
    return base if floor == CITY_LIST_FLOORS[0] else f"{base}-over-{floor}"


def state_decade_slug(year: int) -> str:
    return f"us-states-admitted-in-the-{year // 10 * 10}s"


def state_tz_slug(tz: str) -> str:
    return f"us-states-in-the-{slugify(tz)}-time-zone"


def currencies_of_slug(place: str) -> str:
    return f"currencies-of-{slugify(place)}"


def languages_of_slug(place: str) -> str:
    return f"official-languages-of-{slugify(place)}"


# ---------------------------------------------------------------- entity pages


def _country_page(c: Country, ctx: _Context) -> EntityPage:
    lang_names = [ctx.language_name[code] for code in c.languages]
    currency_names = [ctx.currency_name.get(code, code) for code in c.currencies]
    border_sentence = (
        f"It shares land borders with {join_names(c.borders)}."
        if c.borders
        else "It has no land border with another country in this index."
    )
    prose = pick(
        [
            f"{c.name} is a country in {with_the(c.subregion)}, part of {with_the(c.region)}. Its capital is "
            f"{c.capital}, and about {approx_words(c.population)} people live there. {border_sentence}",
            f"{c.name} lies in {with_the(c.subregion)}. The seat of government is {c.capital}; the money in use "
            f"is the {join_names(currency_names)}. {border_sentence}",
            f"Located in {with_the(c.subregion)} ({c.region}), {c.name} covers roughly "
            f"{approx_words(c.area_km2)} square kilometres and has {c.capital} as its capital. "
            + (f"Official languages include {join_names(lang_names)}." if lang_names else border_sentence),
        ],
        c.name,
    )
    fact_lines = [
        ("Capital", c.capital),
        ("Population", plain_number(c.population)),
        ("Area (km2)", plain_number(c.area_km2)),
        ("Currency codes", ", ".join(c.currencies)),
        ("Official languages", ", ".join(lang_names) if lang_names else None),
        ("ISO alpha-2 code", c.iso2),
        ("ISO alpha-3 code", c.iso3),
        ("ISO numeric code", c.iso_numeric),
        ("Calling code", ", ".join(f"+{code}" for code in c.calling_codes) if c.calling_codes else None),
        ("Region", c.region),
        ("Subregion", c.subregion),
        ("Borders", ", ".join(c.borders) if c.borders else "none"),
    ]
    links = [(f"Countries of {with_the(c.subregion)}", list_url(region_list_slug(c.subregion))),
             (f"Countries of {with_the(c.region)}", list_url(region_list_slug(c.region)))]
    capital = ctx.city_by_name.get((c.name, c.capital))
    if capital is not None:
        links.append((f"{c.capital} (capital)", city_url(capital)))
    links += [(code, currency_url(code)) for code in c.currencies if code in ctx.currency_name]
    links += [(ctx.language_name[code], ctx.language_url[code]) for code in c.languages]
    links += [(name, country_url(name)) for name in c.borders]
    for slug, anchor in ((neighbours_list_slug(c.name), f"Countries bordering {c.name}"),
                         (airports_slug(c.name), f"Airports in {c.name}"),
                         (cities_slug(c.name, CITY_LIST_FLOORS[0]), f"Cities in {c.name}")):
        if slug in ctx.list_slugs:
            links.append((anchor, list_url(slug)))
    return _entity("country", c.name, c.name, country_url(c.name), prose, fact_lines, links)


def _element_page(e: Element, ctx: _Context) -> EntityPage:
    group_clause = f", group {e.group}" if e.group is not None else ""
    if e.discovery_year is not None:
        discovery = f"It was first described by {e.discoverers} in {e.discovery_year}."
    elif e.discoverers:
        discovery = f"It was first described by {e.discoverers}."
    else:
        discovery = "It has been known since antiquity."
    prose = pick(
        [
            f"{e.name} ({e.symbol}) is the chemical element with atomic number {e.atomic_number}. It sits in "
            f"period {e.period}{group_clause} of the periodic table, in the {e.block}-block. {discovery}",
            f"With {e.atomic_number} protons in each nucleus, {e.name} is a {e.block}-block element of period "
            f"{e.period}{group_clause}. {discovery}",
            f"{discovery} {e.name}, symbol {e.symbol}, has a standard atomic weight of about "
            f"{e.atomic_mass:.1f} and belongs to the {e.block}-block.",
        ],
        e.name,
    )
    fact_lines = [
        ("Symbol", e.symbol),
        ("Atomic number", str(e.atomic_number)),
        ("Atomic mass", plain_number(e.atomic_mass)),
        ("Group", str(e.group) if e.group is not None else None),
        ("Period", str(e.period)),
        ("Block", e.block),
        ("Discovered by", e.discoverers or "known since antiquity"),
        ("Discovery year", str(e.discovery_year) if e.discovery_year is not None else None),
        ("Discovery location", ", ".join(e.discovery_locations) if e.discovery_locations else None),
    ]
    links = []
    if e.group is not None:
        links.append((f"Elements of group {e.group}", list_url(group_slug(e.group))))
    links += [(f"Elements of period {e.period}", list_url(period_slug(e.period))),
              (f"Elements of the {e.block}-block", list_url(block_slug(e.block)))]
    return _entity("element", e.name, e.name, element_url(e), prose, fact_lines, links)


def _state_page(s: UsState, ctx: _Context) -> EntityPage:
    prose = pick(
        [
            f"{s.name} is a state of the United States whose capital is {s.capital}. It joined the Union in "
            f"{s.statehood_year}.",
            f"The state of {s.name} ({s.abbreviation}) has been part of the United States since "
            f"{s.statehood_year}; its government sits in {s.capital}.",
            f"{s.capital} is the capital of {s.name}, which became a U.S. state in {s.statehood_year}.",
        ],
        s.name,
    )
    fact_lines = [
        ("Abbreviation", s.abbreviation),
        ("AP abbreviation", s.ap_abbreviation),
        ("FIPS code", s.fips),
        ("Capital", s.capital),
        ("Statehood year", str(s.statehood_year)),
        ("Capital time zone", s.capital_time_zone),
        ("Time zones", ", ".join(s.time_zones)),
    ]
    links = [(f"US states admitted in the {s.statehood_year // 10 * 10}s",
              list_url(state_decade_slug(s.statehood_year)))]
    links += [(f"US states in the {tz} time zone", list_url(state_tz_slug(tz)))
              for tz in s.time_zones if state_tz_slug(tz) in ctx.list_slugs]
    return _entity("us_state", s.name, s.name, state_url(s), prose, fact_lines, links)


def _airport_page(a: Airport, ctx: _Context) -> EntityPage:
    prose = pick(
        [
            f"{a.name} is an airport serving {a.city}, {a.country}. Its runway field lies about "
            f"{a.elevation_ft} feet above sea level.",
            f"Located near {a.city} in {a.country}, {a.name} is known to airlines by the code {a.iata}.",
            f"{a.name} serves the {a.city} area" + (f" in {a.subdivision}" if a.subdivision else "")
            + f", {a.country}. Local time follows the {a.time_zone} zone.",
        ],
        a.iata,
    )
    fact_lines = [
        ("IATA code", a.iata),
        ("ICAO code", a.icao),
        ("City", a.city),
        ("Subdivision", a.subdivision or None),
        ("Country", a.country),
        ("Elevation (ft)", plain_number(a.elevation_ft)),
        ("Time zone", a.time_zone),
        ("Latitude", plain_number(a.latitude)),
        ("Longitude", plain_number(a.longitude)),
    ]
    links = [(a.country, country_url(a.country)), (f"Airports in {a.country}", list_url(airports_slug(a.country)))]
    city = ctx.city_by_name.get((a.country, a.city))
    if city is not None:
        links.append((f"{city.name}, {city.country}", city_url(city)))
    return _entity("airport", a.name, a.name, airport_url(a), prose, fact_lines, links)


def _city_page(c: City, ctx: _Context) -> EntityPage:
    is_capital = ctx.capital_of.get(c.country) == c.name
    role = f"the capital of {c.country}" if is_capital else f"a city in {c.country}"
    prose = pick(
        [
            f"{c.name} is {role}, home to roughly {approx_words(c.population)} people.",
            f"{c.name}, {role}, keeps its clocks on {c.time_zone} time and has about "
            f"{approx_words(c.population)} inhabitants.",
            f"With around {approx_words(c.population)} residents, {c.name} is {role}.",
        ],
        f"{c.name} {c.country}",
    )
    fact_lines = [
        ("Country", c.country),
        ("Population", plain_number(c.population)),
        ("Time zone", c.time_zone),
        ("Latitude", plain_number(c.latitude)),
        ("Longitude", plain_number(c.longitude)),
        ("GeoNames ID", str(c.geonames_id)),
    ]
    links = [(c.country, country_url(c.country)),
             (f"Cities in {c.country}", list_url(cities_slug(c.country, CITY_LIST_FLOORS[0])))]
    return _entity("city", c.name, f"{c.name}, {c.country}", city_url(c), prose, fact_lines, links)


def _currency_page(c: Currency, ctx: _Context) -> EntityPage:
    minor = (f"it is divided into {10 ** c.minor_units} minor units" if c.minor_units
             else "it has no minor unit in use")
    prose = pick(
        [
            f"The {c.name} ({c.code}) is the currency of {join_names(c.countries)}.",
            f"{c.name} is the ISO 4217 currency with code {c.code}; {minor}.",
            f"In {join_names(c.countries, limit=3)}, prices are quoted in {c.name}.",
        ],
        c.code,
    )
    fact_lines = [
        ("Code", c.code),
        ("Numeric code", c.numeric_code),
        ("Minor units", str(c.minor_units)),
        ("Used in", ", ".join(c.countries)),
    ]
    links = [(name, country_url(name)) for name in c.countries]
    if currency_users_slug(c.code) in ctx.list_slugs:
        links.append((f"Countries using {c.name}", list_url(currency_users_slug(c.code))))
    return _entity("currency", c.name, f"{c.name} ({c.code})", currency_url(c.code), prose, fact_lines, links)


def _language_page(lang: Language, ctx: _Context) -> EntityPage:
    native = f" (natively {lang.native_name})" if lang.native_name and lang.native_name != lang.name else ""
    prose = pick(
        [
            f"{lang.name}{native} is an official language in {join_names(lang.countries)}.",
            f"{lang.name} has official status in {len(lang.countries)} of the countries and territories in this "
            f"index, among them {join_names(lang.countries, limit=3)}.",
            f"The {lang.name} language{native} is recognised as official in {join_names(lang.countries, limit=4)}.",
        ],
        lang.iso639_3,
    )
    fact_lines = [
        ("ISO 639-1 code", lang.iso639_1),
        ("ISO 639-2 code", lang.iso639_2),
        ("ISO 639-3 code", lang.iso639_3),
        ("Native name", lang.native_name),
        ("Official in", ", ".join(lang.countries)),
    ]
    links = [(name, country_url(name)) for name in lang.countries]
    if language_users_slug(lang) in ctx.list_slugs:
        links.append((f"Countries where {lang.name} is official", list_url(language_users_slug(lang))))
    return _entity("language", lang.name, f"{lang.name} language", language_url(lang), prose, fact_lines, links)


def _entity(kind, name, title, url, prose, fact_lines, links) -> EntityPage:
    # Facts a package lacks are left out rather than written as "unknown".
    present = tuple((label, value) for label, value in fact_lines if value not in (None, ""))
    return EntityPage(url, kind, name, title, prose, present, tuple(links))


# ---------------------------------------------------------------- list pages


@dataclass(frozen=True)
class _Context:
    """Look-ups the page builders share, computed once."""

    language_name: dict[str, str]  # countryinfo language code -> name
    language_url: dict[str, str]
    currency_name: dict[str, str]
    city_by_name: dict[tuple[str, str], City]  # (country, city name)
    capital_of: dict[str, str]
    list_slugs: frozenset[str]


def _list_pages(facts: Facts) -> list[ListPage]:
    pages: list[ListPage] = []

    def add(category: str, slug: str, title: str, description: str, members: Iterable[tuple[str, str]]):
        pages.append(ListPage(list_url(slug), slug, category, title, description, tuple(sorted(set(members)))))

    countries_in: dict[str, list[Country]] = defaultdict(list)
    for c in facts.countries:
        countries_in[c.region].append(c)
        countries_in[c.subregion].append(c)
    for place, members in countries_in.items():
        add("countries-by-region", region_list_slug(place), f"Countries of {with_the(place)}",
            f"countries and territories of {with_the(place)}", ((c.name, country_url(c.name)) for c in members))
        currencies = {code for c in members for code in c.currencies}
        add("currencies-by-region", currencies_of_slug(place), f"Currencies of {with_the(place)}",
            f"currencies used in the countries and territories of {with_the(place)}",
            ((cur.name, currency_url(cur.code)) for cur in facts.currencies if cur.code in currencies))
        languages = {lang_code for c in members for lang_code in c.languages}
        add("languages-by-region", languages_of_slug(place), f"Official languages of {with_the(place)}",
            f"official languages of the countries and territories of {with_the(place)}",
            ((lang.name, language_url(lang)) for lang in facts.languages if lang.code in languages))

    for c in facts.countries:
        if c.borders:
            add("countries-bordering", neighbours_list_slug(c.name), f"Countries bordering {c.name}",
                f"countries that share a land border with {c.name}", ((n, country_url(n)) for n in c.borders))
    for cur in facts.currencies:
        if len(cur.countries) >= 2:
            add("countries-by-currency", currency_users_slug(cur.code), f"Countries using {cur.name} ({cur.code})",
                f"countries and territories that use {cur.name} ({cur.code})",
                ((n, country_url(n)) for n in cur.countries))
    for lang in facts.languages:
        if len(lang.countries) >= 2:
            add("countries-by-language", language_users_slug(lang), f"Countries where {lang.name} is official",
                f"countries and territories where {lang.name} is an official language",
                ((n, country_url(n)) for n in lang.countries))

    _element_lists(facts, add)
    _state_lists(facts, add)

    airports_in: dict[str, list[Airport]] = defaultdict(list)
    for a in facts.airports:
        airports_in[a.country].append(a)
    for country, members in airports_in.items():
        add("airports-by-country", airports_slug(country), f"Airports in {country}",
            f"airports in {country} that have both an IATA and an ICAO code",
            ((a.name, airport_url(a)) for a in members))

    cities_in: dict[str, list[City]] = defaultdict(list)
    for c in facts.cities:
        cities_in[c.country].append(c)
    for country, members in cities_in.items():
        previous: list[City] = []
        for floor in CITY_LIST_FLOORS:
            subset = [c for c in members if c.population >= floor]
            # a higher floor is only worth a page when the lower list is long and this one is
            # still a real set
            if previous and (len(previous) <= CITY_LIST_SPLIT_ABOVE or len(subset) < 3):
                break
            previous = subset
            add("cities-by-country", cities_slug(country, floor),
                f"Cities in {country}" + ("" if floor == CITY_LIST_FLOORS[0] else f" over {floor}"),
                f"cities in {country} with a population of at least {floor}",
                ((c.name, city_url(c)) for c in subset))

    add("index", "countries", "List of countries and territories", "countries and territories in this index",
        ((c.name, country_url(c.name)) for c in facts.countries))
    add("index", "chemical-elements", "List of chemical elements", "chemical elements",
        ((e.name, element_url(e)) for e in facts.elements))
    add("index", "us-states", "List of US states", "states of the United States",
        ((s.name, state_url(s)) for s in facts.us_states))
    add("index", "currencies", "List of currencies", "currencies in this index",
        ((c.name, currency_url(c.code)) for c in facts.currencies))
    add("index", "languages", "List of official languages", "official languages in this index",
        ((lang.name, language_url(lang)) for lang in facts.languages))
    return pages


def _element_lists(facts: Facts, add: Callable) -> None:
    by_group, by_period, by_block, by_place, by_era = (defaultdict(list) for _ in range(5))
    for e in facts.elements:
        if e.group is not None:
            by_group[e.group].append(e)
        by_period[e.period].append(e)
        by_block[e.block].append(e)
        for place in e.discovery_locations:
            by_place[place].append(e)
        era = next((phrase for lo, hi, phrase in DISCOVERY_ERAS if e.discovery_year is not None
                    and lo <= e.discovery_year <= hi), "known since antiquity")
        by_era[era].append(e)

    def members(elements):
        return ((e.name, element_url(e)) for e in elements)

    for group, elements in by_group.items():
        add("elements-by-position", group_slug(group), f"Elements of group {group}",
            f"chemical elements of group {group} of the periodic table", members(elements))
    for period, elements in by_period.items():
        add("elements-by-position", period_slug(period), f"Elements of period {period}",
            f"chemical elements of period {period} of the periodic table", members(elements))
    for block, elements in by_block.items():
        add("elements-by-position", block_slug(block), f"Elements of the {block}-block",
            f"chemical elements of the {block}-block of the periodic table", members(elements))
    for place, elements in by_place.items():
        add("elements-by-discovery", f"elements-discovered-in-{slugify(place)}", f"Elements discovered in {place}",
            f"chemical elements whose discovery took place in {place}", members(elements))
    for era, elements in by_era.items():
        if era == "known since antiquity":
            add("elements-by-discovery", "elements-known-since-antiquity", "Elements known since antiquity",
                "chemical elements known since antiquity", members(elements))
        else:
            add("elements-by-discovery", f"elements-discovered-{slugify(era)}", f"Elements discovered {era}",
                f"chemical elements discovered {era}", members(elements))


def _state_lists(facts: Facts, add: Callable) -> None:
    by_decade, by_era, by_tz = (defaultdict(list) for _ in range(3))
    for s in facts.us_states:
        by_decade[s.statehood_year // 10 * 10].append(s)
        by_era[next(phrase for lo, hi, phrase in STATEHOOD_ERAS if lo <= s.statehood_year <= hi)].append(s)
        for tz in s.time_zones:
            by_tz[tz].append(s)

    def members(states):
        return ((s.name, state_url(s)) for s in states)

    for decade, states in by_decade.items():
        add("us-states-by-admission", state_decade_slug(decade), f"US states admitted in the {decade}s",
            f"US states admitted to the Union in the {decade}s", members(states))
    for era, states in by_era.items():
        add("us-states-by-admission", f"us-states-admitted-{slugify(era)}", f"US states admitted {era}",
            f"US states admitted to the Union {era}", members(states))
    for tz, states in by_tz.items():
        if len(states) >= 2:  # a one-state time zone is not a list anyone looks up
            add("us-states-by-time-zone", state_tz_slug(tz), f"US states in the {tz} time zone",
                f"US states that have territory in the {tz} time zone", members(states))


def _add_related(pages: list[ListPage]) -> list[ListPage]:
    """Link each list page to the other lists of its category (capped, so pages stay short)."""
    by_category: dict[str, list[ListPage]] = defaultdict(list)
    for page in pages:
        by_category[page.category].append(page)
    out = []
    for page in pages:
        siblings = [p for p in sorted(by_category[page.category], key=lambda p: p.slug) if p.slug != page.slug]
        related = tuple((p.title, p.url) for p in siblings[:12])
        out.append(ListPage(page.url, page.slug, page.category, page.title, page.description, page.members, related))
    return out


# ---------------------------------------------------------------- the whole web


@functools.cache
def build_miniweb() -> MiniWeb:
    """Every page of the mini-web, in memory (cached per process)."""
    facts = load_facts()
    lists = _add_related(_list_pages(facts))
    language_of_code = {lang.code: lang for lang in facts.languages}
    ctx = _Context(
        language_name={code: lang.name for code, lang in language_of_code.items()},
        language_url={code: language_url(lang) for code, lang in language_of_code.items()},
        currency_name={c.code: c.name for c in facts.currencies},
        city_by_name={(c.country, c.name): c for c in facts.cities},
        capital_of={c.name: c.capital for c in facts.countries},
        list_slugs=frozenset(p.slug for p in lists),
    )
    entities = [_country_page(c, ctx) for c in facts.countries]
    entities += [_element_page(e, ctx) for e in facts.elements]
    entities += [_state_page(s, ctx) for s in facts.us_states]
    entities += [_airport_page(a, ctx) for a in facts.airports]
    entities += [_city_page(c, ctx) for c in facts.cities]
    entities += [_currency_page(c, ctx) for c in facts.currencies]
    entities += [_language_page(lang, ctx) for lang in facts.languages]

    by_url: dict[str, EntityPage] = {}
    for page in entities:
        if page.url in by_url:
            raise WideseekError(f"mini-web: two entities share the URL {page.url}")
        by_url[page.url] = page
    lists_by_url: dict[str, ListPage] = {}
    for page in lists:
        if page.url in lists_by_url:
            raise WideseekError(f"mini-web: two lists share the URL {page.url}")
        lists_by_url[page.url] = page
    return MiniWeb(by_url, lists_by_url)


def page_records(web: MiniWeb) -> list[dict[str, str]]:
    records = [{"url": p.url, "title": p.title, "kind": p.kind, "text": p.text()} for p in web.entities.values()]
    records += [{"url": p.url, "title": p.title, "kind": "list", "text": p.text()} for p in web.lists.values()]
    return sorted(records, key=lambda r: r["url"])


def corpus_fingerprint() -> str:
    return fingerprint("miniweb-corpus", CORPUS_VERSION, package_versions())


def build_corpus(out_dir: Path, force: bool = False) -> BuildResult:
    """Write pages.jsonl and manifest.json into `out_dir` (a no-op when already built from the
    same corpus version and package versions)."""

    def build(tmp: Path) -> dict:
        records = page_records(build_miniweb())
        blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        (tmp / PAGES_FILE).write_bytes(blob)
        counts: dict[str, int] = defaultdict(int)
        for r in records:
            counts[r["kind"]] += 1
        manifest = {
            "corpus_version": CORPUS_VERSION,
            "page_counts": dict(sorted(counts.items())),
            "total_pages": len(records),
            "package_versions": package_versions(),
            "content_hash": hashlib.sha256(blob).hexdigest(),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return {**manifest["page_counts"], "total": len(records)}

    return build_folder("corpus", Path(out_dir), corpus_fingerprint(), build, force=force)


def read_manifest(corpus_dir: Path) -> dict:
    path = Path(corpus_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise WideseekError(f"mini-web corpus manifest missing: {path} (build the corpus first)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise WideseekError(f"mini-web corpus manifest unreadable: {path}: {exc}") from None
    if not isinstance(manifest, dict) or "content_hash" not in manifest:
        raise WideseekError(f"mini-web corpus manifest malformed: {path}")
    return manifest


def load_page_records(corpus_dir: Path) -> list[dict[str, str]]:
    """The raw page records (url, title, kind, text), checked against the manifest's hash."""
    manifest = read_manifest(corpus_dir)
    path = Path(corpus_dir) / PAGES_FILE
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise WideseekError(f"mini-web corpus pages missing or unreadable: {path}: {exc}") from None
    if hashlib.sha256(blob).hexdigest() != manifest["content_hash"]:
        raise WideseekError(f"mini-web corpus pages do not match their manifest hash: {path} (rebuild with force)")
    records = []
    for number, line in enumerate(blob.decode("utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
            records.append({k: record[k] for k in ("url", "title", "kind", "text")})
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise WideseekError(f"mini-web corpus page malformed: {path} line {number}: {exc}") from None
    return records


def load_pages(corpus_dir: Path) -> list[Page]:
    return [Page(r["url"], r["title"], r["text"]) for r in load_page_records(corpus_dir)]
