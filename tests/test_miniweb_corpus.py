"""The mini-web corpus: deterministic, stamped, well linked, and honest about what lists show."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wideseek_exp import REPO_ROOT, WideseekError
from wideseek_exp.search.facts import FACT_PACKAGES, load_facts, package_versions
from wideseek_exp.search.miniweb import (
    BASE_URL,
    CORPUS_VERSION,
    build_corpus,
    load_page_records,
    load_pages,
    read_manifest,
    slugify,
)

KINDS = ("country", "element", "us_state", "airport", "city", "currency", "language", "list")
URL_PATTERN = re.compile(r"^https://miniweb\.local/(country|element|us-state|airport|city|currency|language|list)"
                         r"/[a-z0-9]+(-[a-z0-9]+)*$")
# anchor text may hold escaped brackets (\[ and \])
LINK_PATTERN = re.compile(r"\[((?:\\.|[^\]\\])+)\]\((https://miniweb\.local/[^)\s]+)\)")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "miniweb"
    result = build_corpus(out)
    records = load_page_records(out)
    return {"dir": out, "result": result, "records": records,
            "by_url": {r["url"]: r for r in records}}


def member_links(list_text: str) -> list[tuple[str, str]]:
    """The member links of a list page: the bullets before its "Related lists" section."""
    members_part = list_text.split("\nRelated lists\n")[0]
    return LINK_PATTERN.findall(members_part)


def test_first_build_reports_counts(corpus):
    result = corpus["result"]
    assert result.built
    assert result.counts["total"] == len(corpus["records"])


def test_rebuild_is_a_noop_and_builds_are_byte_identical(corpus, tmp_path):
    again = build_corpus(corpus["dir"])
    assert not again.built, "an unchanged corpus must not be rebuilt"
    other = build_corpus(tmp_path / "second")
    assert other.built
    first_bytes = (corpus["dir"] / "pages.jsonl").read_bytes()
    assert (tmp_path / "second" / "pages.jsonl").read_bytes() == first_bytes
    assert (tmp_path / "second" / "manifest.json").read_bytes() == (corpus["dir"] / "manifest.json").read_bytes()
    forced = build_corpus(tmp_path / "second", force=True)
    assert forced.built
    assert (tmp_path / "second" / "pages.jsonl").read_bytes() == first_bytes


def test_build_in_a_fresh_process_with_another_hash_seed_is_identical(corpus, tmp_path):
    # in-process builds share caches; a new interpreter with a different str hash seed catches
    # any dependence on set or dict iteration order
    script = ("import sys; from pathlib import Path; from wideseek_exp.search.miniweb import build_corpus; "
              "build_corpus(Path(sys.argv[1]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "fresh")], check=True, cwd=REPO_ROOT, env=env)
    assert (tmp_path / "fresh" / "pages.jsonl").read_bytes() == (corpus["dir"] / "pages.jsonl").read_bytes()


def test_manifest_matches_pages(corpus):
    manifest = read_manifest(corpus["dir"])
    blob = (corpus["dir"] / "pages.jsonl").read_bytes()
    assert manifest["content_hash"] == hashlib.sha256(blob).hexdigest()
    assert manifest["corpus_version"] == CORPUS_VERSION
    assert manifest["package_versions"] == package_versions()
    assert set(manifest["package_versions"]) == set(FACT_PACKAGES)
    assert manifest["total_pages"] == len(corpus["records"]) == blob.count(b"\n")
    assert sum(manifest["page_counts"].values()) == manifest["total_pages"]


def test_every_kind_present_with_sane_counts(corpus):
    counts = read_manifest(corpus["dir"])["page_counts"]
    assert set(counts) == set(KINDS)
    assert counts["element"] == 118
    assert counts["us_state"] == 50
    assert 180 <= counts["country"] <= 260
    assert 1000 <= counts["airport"] <= 4000
    assert 500 <= counts["city"] <= 2500
    assert 80 <= counts["currency"] <= 200
    assert 60 <= counts["language"] <= 200
    assert 100 <= counts["list"] <= 2000
    assert sum(counts.values()) <= 10000, "the mini-web should stay a few thousand pages"


def test_urls_are_unique_sorted_and_well_formed(corpus):
    urls = [r["url"] for r in corpus["records"]]
    assert urls == sorted(urls)
    assert len(urls) == len(set(urls))
    bad = [u for u in urls if not URL_PATTERN.match(u)]
    assert not bad, bad[:5]
    for record in corpus["records"]:
        segment = record["url"].removeprefix(BASE_URL + "/").split("/")[0]
        assert segment == record["kind"].replace("_", "-")


@pytest.mark.parametrize("path, title", [
    ("country/france", "France"),
    ("element/iron", "Iron"),
    ("us-state/georgia", "Georgia"),
    ("airport/narita-international-airport-nrt", "Narita International Airport"),
    ("city/paris-france", "Paris, France"),
    ("currency/eur", "Euro (EUR)"),
    ("language/french", "French language"),
    ("list/countries-of-south-america", "Countries of South America"),
    ("list/elements-of-group-1", "Elements of group 1"),
    ("list/elements-of-period-4", "Elements of period 4"),
    ("list/us-states-admitted-before-1800", "US states admitted before 1800"),
    ("list/countries-bordering-germany", "Countries bordering Germany"),
    ("list/airports-in-japan", "Airports in Japan"),
    ("list/cities-in-brazil", "Cities in Brazil"),
    ("list/currencies-of-africa", "Currencies of Africa"),
])
def test_stable_urls_exist(corpus, path, title):
    record = corpus["by_url"].get(f"{BASE_URL}/{path}")
    assert record is not None, path
    assert record["title"] == title
    assert record["text"].startswith(title + "\n")


def test_entity_facts_are_written_in_canonical_form(corpus):
    france = corpus["by_url"][f"{BASE_URL}/country/france"]["text"]
    for line in ("Capital: Paris", "Currency codes: EUR", "ISO alpha-3 code: FRA", "Region: Europe"):
        assert line in france.splitlines()
    assert re.search(r"^Population: \d+$", france, re.M)
    assert re.search(r"^Area \(km2\): \d+(\.\d+)?$", france, re.M)
    iron = corpus["by_url"][f"{BASE_URL}/element/iron"]["text"].splitlines()
    assert {"Symbol: Fe", "Atomic number: 26", "Atomic mass: 55.845", "Group: 8", "Period: 4"} <= set(iron)
    narita = corpus["by_url"][f"{BASE_URL}/airport/narita-international-airport-nrt"]["text"].splitlines()
    assert {"IATA code: NRT", "ICAO code: RJAA", "Country: Japan"} <= set(narita)
    for record in corpus["records"]:
        if record["kind"] == "list":
            continue
        lines = record["text"].splitlines()
        assert "Facts" in lines, record["url"]
        facts = lines[lines.index("Facts") + 1:]
        assert facts and re.match(r"^[A-Za-z0-9 ()-]+: .+$", facts[0]), record["url"]


def test_list_pages_link_only_to_existing_pages(corpus):
    by_url = corpus["by_url"]
    lists = [r for r in corpus["records"] if r["kind"] == "list"]
    for record in lists:
        members = member_links(record["text"])
        assert members, f"{record['url']} names no members"
        for _, url in LINK_PATTERN.findall(record["text"]):
            assert url in by_url, f"{record['url']} links to missing {url}"
    for record in corpus["records"]:
        for _, url in LINK_PATTERN.findall(record["text"]):
            assert url in by_url, f"{record['url']} links to missing {url}"


def test_list_pages_state_no_member_attributes(corpus):
    for record in corpus["records"]:
        if record["kind"] == "list":
            lines = record["text"].splitlines()
            assert "Facts" not in lines
            assert not [line for line in lines if re.match(r"^[A-Z][A-Za-z0-9 ()-]+: ", line)], record["url"]
    south_america = corpus["by_url"][f"{BASE_URL}/list/countries-of-south-america"]["text"]
    assert "Brazil" in south_america and "Argentina" in south_america
    for attribute in ("Brasília", "Buenos Aires", "ARS", "BRL"):
        assert attribute not in south_america


def test_every_entity_is_reachable_from_some_list(corpus):
    listed = {url for r in corpus["records"] if r["kind"] == "list" for _, url in member_links(r["text"])}
    unlisted = [r["url"] for r in corpus["records"] if r["kind"] != "list" and r["url"] not in listed]
    assert not unlisted, unlisted[:5]


def test_load_pages_matches_records(corpus):
    pages = load_pages(corpus["dir"])
    assert [p.url for p in pages] == [r["url"] for r in corpus["records"]]
    assert pages[0].text == corpus["records"][0]["text"]


def test_missing_corpus_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(WideseekError, match=re.escape(str(missing))):
        load_pages(missing)
    with pytest.raises(WideseekError, match=re.escape(str(missing))):
        read_manifest(missing)


def copy_corpus(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("pages.jsonl", "manifest.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_corrupt_pages_are_refused(corpus, tmp_path):
    broken = copy_corpus(corpus["dir"], tmp_path / "broken")
    blob = bytearray((broken / "pages.jsonl").read_bytes())
    blob[100] = ord("#") if blob[100] != ord("#") else ord("%")
    (broken / "pages.jsonl").write_bytes(bytes(blob))
    with pytest.raises(WideseekError, match="pages.jsonl"):
        load_pages(broken)


def test_corrupt_manifest_is_refused(corpus, tmp_path):
    broken = copy_corpus(corpus["dir"], tmp_path / "broken")
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(WideseekError, match="manifest.json"):
        load_pages(broken)


def test_facts_are_sorted_and_complete():
    facts = load_facts()
    assert load_facts() is facts  # cached in-process
    names = [c.name for c in facts.countries]
    assert names == sorted(names) and len(names) == len(set(names))
    assert [e.atomic_number for e in facts.elements] == list(range(1, 119))
    assert all(c.capital and c.population > 0 and c.area_km2 > 0 and c.currencies for c in facts.countries)
    assert all(len(a.iata) == 3 and len(a.icao) == 4 for a in facts.airports)
    assert all(len(c.numeric_code) == 3 and c.countries for c in facts.currencies)
    france = next(c for c in facts.countries if c.name == "France")
    assert "Germany" in france.borders and france.subregion == "Western Europe"
    brazil = next(c for c in facts.countries if c.name == "Brazil")
    assert brazil.subregion == "South America"  # intermediate region replaces the lumped one


def test_slugify():
    assert slugify("São Tomé and Príncipe") == "sao-tome-and-principe"
    assert slugify("Holy See (Vatican City State)") == "holy-see-vatican-city-state"
    assert slugify("  Guinea-Bissau ") == "guinea-bissau"
    assert slugify("中文") == slugify("中文") and slugify("中文") != slugify("日本語")
    assert json.dumps(slugify("Ærø")).isascii()
