"""The bm25 backend on a small hand-made corpus in the mini-web format."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from wideseek_exp import WideseekError
from wideseek_exp.search.base import Hit, Page
from wideseek_exp.search.bm25 import SNIPPET_CHARS, BM25Backend, build_index

BASE = "https://miniweb.local"

# A handful of pages with facts no other page shares, so the right answer is unambiguous.
DISTINCT = [
    ("country", "Zorvania", {"Capital": "Quellport", "Currency": "Zorvanian krell", "Population": "4200000"}),
    ("country", "Meltharia", {"Capital": "Ostravel", "Currency": "Melthari dune", "Population": "910000"}),
    ("city", "Quellport", {"Country": "Zorvania", "Population": "380000", "Founded": "1622"}),
    ("element", "Brightium", {"Symbol": "Bt", "Atomic number": "131", "Discovered by": "Ada Pellinore"}),
    ("airport", "Ostravel Skyharbor", {"IATA code": "OSX", "City": "Ostravel", "Runways": "3"}),
]
FILLER_PROSE = (
    "It is known for its long history of trade along the coast and its mild climate. "
    "Visitors often travel there in spring when the markets are busiest. "
)


def _page(kind: str, title: str, facts: dict[str, str], prose: str) -> dict:
    fact_lines = "\n".join(f"{k}: {v}" for k, v in facts.items())
    slug = title.lower().replace(" ", "-")
    return {"url": f"{BASE}/{kind}/{slug}", "title": title, "kind": kind, "text": f"{title}\n{fact_lines}\n{prose}"}


def make_pages() -> list[dict]:
    pages = [_page(kind, title, facts, f"{title} is a {kind} in the mini-web. " + FILLER_PROSE)
             for kind, title, facts in DISTINCT]
    for i in range(44):
        facts = {"Population": str(1000 * (i + 1)), "Region": f"Region {i % 5}"}
        pages.append(_page("city", f"Fillertown {i}", facts, f"Fillertown {i} is a small city. " + FILLER_PROSE))
    # A long page whose only mention of a rare word sits far from the start: the snippet must find it.
    long_prose = FILLER_PROSE * 12 + "Its lighthouse keeps a famous glass orrery of the harbour. " + FILLER_PROSE * 6
    pages.append(_page("city", "Longharbour", {"Population": "52000"}, long_prose))
    pages.append(_page("list", "Countries of the Dune Coast", {"Members": "2"},
                       "The countries of the Dune Coast are Zorvania and Meltharia."))
    return sorted(pages, key=lambda p: p["url"])


def write_corpus(folder: Path, pages: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    blob = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pages)
    (folder / "pages.jsonl").write_text(blob, encoding="utf-8")
    manifest = {"content_hash": hashlib.sha256(blob.encode()).hexdigest(), "total_pages": len(pages)}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bm25")
    corpus = write_corpus(root / "corpus", make_pages())
    result = build_index(corpus, root / "index")
    assert result.built and result.counts["pages"] == len(make_pages())
    return corpus, root / "index"


@pytest.fixture(scope="module")
def backend(built) -> BM25Backend:
    return BM25Backend.load(built[1])


def urls(hits: list[Hit]) -> list[str]:
    return [h.url for h in hits]


# -- ranking and snippets --


@pytest.mark.parametrize(
    "query, url",
    [
        ("capital of Zorvania", f"{BASE}/country/zorvania"),
        ("Melthari dune currency", f"{BASE}/country/meltharia"),
        ("element discovered by Ada Pellinore", f"{BASE}/element/brightium"),
        ("airport with IATA code OSX", f"{BASE}/airport/ostravel-skyharbor"),
        ("countries of the Dune Coast", f"{BASE}/list/countries-of-the-dune-coast"),
    ],
)
def test_distinctive_query_ranks_its_page_first(backend, query, url):
    assert backend.search([query], top_k=3)[0][0].url == url


def test_batched_search_equals_one_by_one(backend):
    queries = ["Zorvania capital", "Quellport founded", "population of Fillertown 7", "", "orrery", "Brightium"]
    batched = backend.search(queries, top_k=5)
    assert batched == [backend.search([q], top_k=5)[0] for q in queries]


def test_top_k_is_respected_and_clamped(backend):
    common = "coast"  # in every page
    assert len(backend.search([common], top_k=1)[0]) == 1
    assert len(backend.search([common], top_k=7)[0]) == 7
    assert len(backend.search([common], top_k=0)[0]) == 1
    assert len(backend.search([common], top_k=-5)[0]) == 1
    assert len(backend.search([common], top_k=1000)[0]) == 50
    for not_an_int in ["5", 2.5, None, True]:
        assert len(backend.search([common], top_k=not_an_int)[0]) == 3
    # Fewer matching pages than k: only the matches, no padding with unrelated pages.
    assert urls(backend.search(["Pellinore"], top_k=10)[0]) == [f"{BASE}/element/brightium"]


def test_results_have_no_duplicates(backend):
    hits = backend.search(["population population Zorvania Zorvania zorvania"], top_k=50)[0]
    assert len(urls(hits)) == len(set(urls(hits))) > 1


def test_snippet_shows_a_query_term(backend):
    for query in ["Quellport founded", "Zorvanian krell", "Ada Pellinore"]:
        for hit in backend.search([query], top_k=3)[0]:
            snippet = hit.snippet.lower()
            assert any(word.lower()[:5] in snippet for word in query.split()), (query, hit)
            assert len(hit.snippet) <= SNIPPET_CHARS + 50
            assert "\n" not in hit.snippet and "  " not in hit.snippet


def test_snippet_is_the_matching_window_not_the_page_start(backend):
    hit = backend.search(["glass orrery"], top_k=1)[0][0]
    assert hit.url == f"{BASE}/city/longharbour"
    assert "orrery" in hit.snippet and not hit.snippet.startswith("Longharbour")


# -- robustness --


@pytest.mark.parametrize("query", ["", "   \n\t", "the of and is", None, 42, ["nested"], "!!! ??? ...", "法国的首都"])
def test_junk_query_gives_an_empty_list(backend, query):
    assert backend.search([query], top_k=3) == [[]]


def test_junk_queries_do_not_disturb_their_neighbours(backend):
    results = backend.search(["", "Zorvania capital", None, "法国 Meltharia"], top_k=2)
    assert results[0] == [] and results[2] == []
    assert results[1][0].url == f"{BASE}/country/zorvania"
    assert results[3][0].url == f"{BASE}/country/meltharia"


def test_oversized_query_is_truncated_not_refused(backend):
    long_query = "Brightium " + "lorem ipsum dolor " * 5000
    hits = backend.search([long_query], top_k=3)[0]
    assert hits and hits[0].url == f"{BASE}/element/brightium"


def test_a_bare_string_counts_as_one_query(backend):
    assert urls(backend.search("Zorvania capital", top_k=1)[0]) == [f"{BASE}/country/zorvania"]


# -- access --


def test_access_exact_url(backend):
    page = backend.access([f"{BASE}/country/zorvania"])[0]
    assert isinstance(page, Page) and page.title == "Zorvania" and "Capital: Quellport" in page.text


@pytest.mark.parametrize(
    "variant",
    [
        "http://miniweb.local/country/zorvania",
        "https://miniweb.local/country/zorvania/",
        "https://MiniWeb.Local/country/zorvania",
        "  https://miniweb.local/country/zorvania \n",
        '"https://miniweb.local/country/zorvania"',
        "<https://miniweb.local/country/zorvania>",
        "https://miniweb.local/country/zorvania#Capital",
        "miniweb.local/country/zorvania",
        "https://miniweb.local/country/Zorvania",
    ],
)
def test_access_normalises_urls(backend, variant):
    page = backend.access([variant])[0]
    assert page is not None and page.url == f"{BASE}/country/zorvania"


@pytest.mark.parametrize(
    "url", [f"{BASE}/country/atlantis", "https://example.com/country/zorvania", "", "   ", None, 7,
            "not a url", "http://[::1", "ftp://miniweb.local/country/zorvania", "javascript:alert(1)"]
)
def test_unknown_or_malformed_url_gives_none(backend, url):
    assert backend.access([url]) == [None]


def test_access_keeps_batch_order(backend):
    asked = [f"{BASE}/city/quellport", "nope", f"{BASE}/country/meltharia"]
    got = backend.access(asked)
    assert [p.title if p else None for p in got] == ["Quellport", None, "Meltharia"]


# -- building and loading --


def test_loaded_index_gives_identical_results(backend, built):
    fresh = BM25Backend.load(built[1])
    queries = ["Zorvania capital", "Ada Pellinore", "glass orrery", "population"]
    assert fresh.search(queries, top_k=10) == backend.search(queries, top_k=10)
    assert fresh.access([f"{BASE}/city/quellport"]) == backend.access([f"{BASE}/city/quellport"])


def test_index_does_not_need_the_corpus(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", make_pages())
    build_index(corpus, tmp_path / "index")
    shutil.rmtree(corpus)
    loaded = BM25Backend.load(tmp_path / "index")
    assert loaded.access([f"{BASE}/country/meltharia"])[0].title == "Meltharia"
    assert urls(loaded.search(["Meltharia"], top_k=1)[0]) == [f"{BASE}/country/meltharia"]


def test_rebuild_is_a_no_op_until_the_corpus_changes(tmp_path):
    pages = make_pages()
    corpus = write_corpus(tmp_path / "corpus", pages)
    assert build_index(corpus, tmp_path / "index").built
    assert not build_index(corpus, tmp_path / "index").built
    assert build_index(corpus, tmp_path / "index", force=True).built

    pages.append(_page("country", "Novaterra", {"Capital": "Brightwater"}, "Novaterra is new."))
    write_corpus(corpus, sorted(pages, key=lambda p: p["url"]))
    assert build_index(corpus, tmp_path / "index").built
    hits = BM25Backend.load(tmp_path / "index").search(["Novaterra"], top_k=1)[0]
    assert urls(hits) == [f"{BASE}/country/novaterra"]


def test_missing_index_names_the_folder_and_the_fix(tmp_path):
    missing = tmp_path / "no-index-here"
    with pytest.raises(WideseekError) as err:
        BM25Backend.load(missing)
    assert str(missing) in str(err.value) and "task=build" in str(err.value)


@pytest.mark.parametrize("damage", ["pages.json", "index_meta.json", "bm25/vocab.index.json"])
def test_corrupt_index_is_a_wideseek_error(built, tmp_path, damage):
    broken = tmp_path / "index"
    shutil.copytree(built[1], broken)
    (broken / damage).write_text("{ not json")
    with pytest.raises(WideseekError, match="task=build"):
        BM25Backend.load(broken)


def test_missing_corpus_is_a_wideseek_error(tmp_path):
    with pytest.raises(WideseekError, match="corpus"):
        build_index(tmp_path / "no-corpus", tmp_path / "index")
