"""Local bm25 search backend over the mini-web corpus.

`build_index` turns a corpus folder (`pages.jsonl` + `manifest.json`) into a self-contained index
folder: a bm25s sparse index plus a page store, so `access` never needs the corpus again.
`BM25Backend.load` reads that folder back; `search` and `access` answer batches and never raise.

Limits: lexical matching only (English stopwords, Snowball English stemmer, tokens of two or more
word characters), so paraphrases, typos and non-English queries find little or nothing. Snippets
are a ~240-character window of the page text around the densest cluster of query terms.
"""

from __future__ import annotations

import json
import logging
import math
import re
from numbers import Integral
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import bm25s
import numpy as np
import Stemmer

from wideseek_exp import WideseekError
from wideseek_exp.buildinfo import BuildResult, build_folder, fingerprint, read_stamp
from wideseek_exp.search.base import Hit, Page, SearchBackend

# Bump when the index layout or the way pages are turned into tokens changes: it forces a rebuild.
INDEX_VERSION = 2
# Everything that decides which tokens a text becomes; part of the fingerprint, shared by build and query.
TOKENIZER = {"token_pattern": r"(?u)\b\w\w+\b", "lower": True, "stopwords": "en", "stemmer": "english"}
BM25_PARAMS = {"k1": 1.5, "b": 0.75, "method": "lucene"}
# The text already opens with its title; two more copies make title words outweigh a passing mention.
TITLE_REPEATS = 2

DEFAULT_TOP_K = 3
MAX_TOP_K = 50
MAX_QUERY_CHARS = 1000
MAX_QUERY_TERMS = 64
SNIPPET_CHARS = 240

BM25_SUBDIR = "bm25"
PAGES_FILE = "pages.json"
META_FILE = "index_meta.json"
BUILD_HINT = "run `python run.py task=build`"

_WORD = re.compile(TOKENIZER["token_pattern"])
_NAVIGATION = re.compile(r"\n\nRelated (?:lists|pages)\n")
_LINK_TARGET = re.compile(r"\]\([^)\s]*\)")
# bm25s logs every index build at DEBUG level on its own logger.
logging.getLogger("bm25s").setLevel(logging.WARNING)
_URL_JUNK = " \t\r\n\"'`<>"
_WORD_SLACK = 20  # how far a snippet edge may move to avoid cutting a word in half


def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer(TOKENIZER["stemmer"])


def _tokenize(texts: list[str], stemmer: Stemmer.Stemmer, return_ids: bool):
    return bm25s.tokenize(
        texts,
        lower=TOKENIZER["lower"],
        token_pattern=TOKENIZER["token_pattern"],
        stopwords=TOKENIZER["stopwords"],
        stemmer=stemmer,
        return_ids=return_ids,
        show_progress=False,
    )


def normalize_url(url: object) -> str | None:
    """A canonical form of a URL as an agent might write it, or None when it is not a usable URL.

    Agents copy URLs with quotes, angle brackets, `http://`, a trailing slash or a `#fragment`;
    all of these should reach the same page.
    """
    if not isinstance(url, str):
        return None
    url = url.strip(_URL_JUNK)
    if not url or any(c.isspace() for c in url):
        return None
    if "://" not in url:
        url = "https://" + url
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), (parts.hostname or "")
    except ValueError:
        return None
    if scheme not in ("http", "https") or not host:
        return None
    path = parts.path.rstrip("/")
    return urlunsplit(("https", host.lower(), path, parts.query, ""))


# ---------------------------------------------------------------------------------------------
# Build


def _read_corpus(corpus_dir: Path) -> tuple[dict, list[Page]]:
    manifest_path, pages_path = corpus_dir / "manifest.json", corpus_dir / "pages.jsonl"
    if not manifest_path.is_file() or not pages_path.is_file():
        raise WideseekError(f"no mini-web corpus at {corpus_dir} (need manifest.json and pages.jsonl); {BUILD_HINT}")
    manifest = _read_manifest(corpus_dir)
    pages: list[Page] = []
    seen: set[str] = set()
    with pages_path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                page = Page(url=str(row["url"]), title=str(row["title"]), text=str(row["text"]))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise WideseekError(f"bad page at {pages_path}:{line_no} ({e}); rebuild the corpus") from e
            # A duplicated URL could only ever show one page through `access`; keep the first.
            if page.url not in seen:
                seen.add(page.url)
                pages.append(page)
    if not pages:
        raise WideseekError(f"corpus at {corpus_dir} has no pages; rebuild the corpus")
    return manifest, pages


def _read_manifest(corpus_dir: Path) -> dict:
    try:
        manifest = json.loads((corpus_dir / "manifest.json").read_text(encoding="utf-8"))
        manifest["content_hash"]  # noqa: B018 - only checking it is there
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise WideseekError(f"unreadable corpus manifest in {corpus_dir} ({e}); {BUILD_HINT}") from e
    return manifest


def index_fingerprint(corpus_dir: Path) -> str:
    manifest = _read_manifest(corpus_dir)
    return fingerprint(INDEX_VERSION, manifest["content_hash"], TOKENIZER, BM25_PARAMS, TITLE_REPEATS)


def page_content(text: str) -> str:
    """A page's own text, without the navigation the mini-web ends every page with (a "Related lists" or
    "Related pages" section of links). Navigation is not content: every list page links all of its
    siblings, so ranking on it put the lists of other regions, groups or countries above the one whose
    description a query repeats (the first hit of a task's description was its list page for 36% of the
    train tasks, and is for 82% without the navigation; experiments/cpu_demo/README.md)."""
    return _NAVIGATION.split(text, 1)[0]


def _indexed_text(page: Page) -> str:
    """What bm25 ranks: the title (weighted) and the content, with link targets dropped (a URL's words
    are not the page's: "/list/countries-of-africa" would match every query about Africa)."""
    return "\n".join([page.title] * TITLE_REPEATS + [_LINK_TARGET.sub("]", page_content(page.text))])


def _write_index(corpus_dir: Path, out_dir: Path) -> dict:
    _, pages = _read_corpus(corpus_dir)
    stemmer = _stemmer()
    docs = [_indexed_text(p) for p in pages]
    retriever = bm25s.BM25(**BM25_PARAMS)
    retriever.index(_tokenize(docs, stemmer, return_ids=True), show_progress=False)
    retriever.save(out_dir / BM25_SUBDIR, show_progress=False)

    store = [{"url": p.url, "title": p.title, "text": p.text} for p in pages]
    (out_dir / PAGES_FILE).write_text(json.dumps(store, ensure_ascii=False), encoding="utf-8")
    meta = {"index_version": INDEX_VERSION, "num_pages": len(pages), "tokenizer": TOKENIZER}
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return {"pages": len(pages), "vocab": len(retriever.vocab_dict)}


def build_index(corpus_dir: Path, index_dir: Path, force: bool = False) -> BuildResult:
    """Build the bm25 index of `corpus_dir` into `index_dir`; a no-op when corpus and settings are unchanged."""
    corpus_dir, index_dir = Path(corpus_dir), Path(index_dir)
    return build_folder(
        "bm25-index", index_dir, index_fingerprint(corpus_dir), lambda tmp: _write_index(corpus_dir, tmp), force
    )


# ---------------------------------------------------------------------------------------------
# Query


class BM25Backend(SearchBackend):
    def __init__(self, retriever: bm25s.BM25, pages: list[Page]):
        self._retriever = retriever
        self._pages = pages
        self._stemmer = _stemmer()
        self._by_url: dict[str, Page] = {}
        self._by_lower_url: dict[str, Page] = {}  # fallback for agents that change the case of a path
        for page in pages:
            key = normalize_url(page.url) or page.url
            self._by_url.setdefault(key, page)
            self._by_lower_url.setdefault(key.lower(), page)
        # Document frequency of every term, to weight rare query terms when placing snippets.
        self._doc_freq = np.diff(retriever.scores["indptr"])

    @classmethod
    def load(cls, index_dir: Path) -> BM25Backend:
        index_dir = Path(index_dir)
        try:
            if read_stamp(index_dir) is None:
                raise FileNotFoundError("no finished build (build.json) there")
            meta = json.loads((index_dir / META_FILE).read_text(encoding="utf-8"))
            if meta.get("index_version") != INDEX_VERSION:
                raise ValueError(f"index version {meta.get('index_version')}, this code reads {INDEX_VERSION}")
            retriever = bm25s.BM25.load(index_dir / BM25_SUBDIR, show_progress=False)
            rows = json.loads((index_dir / PAGES_FILE).read_text(encoding="utf-8"))
            pages = [Page(url=r["url"], title=r["title"], text=r["text"]) for r in rows]
            if len(pages) != retriever.scores["num_docs"]:
                raise ValueError(f"{len(pages)} stored pages but {retriever.scores['num_docs']} indexed documents")
        except Exception as e:  # any failure here means the folder is not a usable index
            raise WideseekError(f"bm25 index at {index_dir} is missing or corrupt ({e}); {BUILD_HINT}") from e
        return cls(retriever, pages)

    # -- search --

    def search(self, queries: list[str], top_k: int = DEFAULT_TOP_K) -> list[list[Hit]]:
        if isinstance(queries, str):  # one query passed bare
            queries = [queries]
        if not isinstance(queries, list | tuple):
            return []
        k = _clamp_top_k(top_k, self._retriever.scores["num_docs"])
        term_lists = self._query_terms(queries)

        results: list[list[Hit]] = [[] for _ in queries]
        asked = [i for i, terms in enumerate(term_lists) if terms]
        if not asked:
            return results
        id_lists = [[self._retriever.vocab_dict[t] for t in term_lists[i]] for i in asked]
        docs, scores = self._retriever.retrieve(id_lists, k=k, show_progress=False, n_threads=0)
        for row, i in enumerate(asked):
            results[i] = self._hits(docs[row], scores[row], term_lists[i])
        return results

    def _query_terms(self, queries: list) -> list[list[str]]:
        """Stemmed, de-duplicated query terms that occur in the index, for every query at once."""
        texts = [q[:MAX_QUERY_CHARS] if isinstance(q, str) else "" for q in queries]
        vocab = self._retriever.vocab_dict
        term_lists = []
        for tokens in _tokenize(texts, self._stemmer, return_ids=False):
            # "" is bm25s's placeholder token and has no column in the score matrix.
            known = [t for t in dict.fromkeys(tokens) if t and t in vocab]
            term_lists.append(known[:MAX_QUERY_TERMS])
        return term_lists

    def _hits(self, doc_ids: np.ndarray, scores: np.ndarray, terms: list[str]) -> list[Hit]:
        weights = self._term_weights(terms)
        hits, seen = [], set()
        for doc_id, score in zip(doc_ids.tolist(), scores.tolist()):
            # Top-k is padded with non-matching documents when fewer than k match.
            if score <= 0:
                continue
            page = self._pages[doc_id]
            if page.url in seen:
                continue
            seen.add(page.url)
            hits.append(Hit(title=page.title, url=page.url, snippet=self._snippet(page_content(page.text), weights)))
        return hits

    def _term_weights(self, terms: list[str]) -> dict[str, float]:
        n = len(self._pages)
        vocab = self._retriever.vocab_dict
        return {t: math.log(1 + n / max(1, int(self._doc_freq[vocab[t]]))) for t in terms}

    def _snippet(self, text: str, weights: dict[str, float]) -> str:
        """The ~SNIPPET_CHARS window holding the most (idf-weighted, distinct) query terms."""
        text = " ".join(text.split())
        if len(text) <= SNIPPET_CHARS:
            return text
        spans = list(_WORD.finditer(text))
        stems = self._stemmer.stemWords([m.group().lower() for m in spans])
        matches = [(m.start(), m.end(), s) for m, s in zip(spans, stems) if s in weights]
        if not matches:
            return _cut(text, 0, SNIPPET_CHARS)

        best, best_span = -1.0, (0, 0)
        for i, (start, _, _) in enumerate(matches):
            found: dict[str, int] = {}
            end = start
            for _, e, stem in matches[i:]:
                if e - start > SNIPPET_CHARS:
                    break
                found[stem] = found.get(stem, 0) + 1
                end = e
            # Distinct terms dominate; repeated mentions only break ties.
            value = sum(weights[t] for t in found) + 0.01 * sum(found.values())
            if value > best:
                best, best_span = value, (start, end)
        # Centre the matched span in the window so it has context on both sides.
        start, end = best_span
        left = max(0, start - (SNIPPET_CHARS - (end - start)) // 2)
        left = min(left, len(text) - SNIPPET_CHARS)
        return _cut(text, left, left + SNIPPET_CHARS)

    # -- access --

    def access(self, urls: list[str]) -> list[Page | None]:
        if isinstance(urls, str):  # one URL passed bare
            urls = [urls]
        if not isinstance(urls, list | tuple):
            return []
        pages: list[Page | None] = []
        for url in urls:
            key = normalize_url(url)
            page = None
            if key is not None:
                page = self._by_url.get(key) or self._by_lower_url.get(key.lower())
            pages.append(page)
        return pages


def _clamp_top_k(top_k: object, num_docs: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, Integral):
        top_k = DEFAULT_TOP_K
    return max(1, min(int(top_k), MAX_TOP_K, num_docs))


def _cut(text: str, left: int, right: int) -> str:
    """text[left:right] widened to whole words, with '...' where the page text goes on.

    Widening (rather than trimming) never drops a matched word at the edge of the window.
    """
    if left > 0 and text[left - 1] != " ":
        space = text.rfind(" ", max(0, left - _WORD_SLACK), left)
        left = space + 1 if space != -1 else left
    if right < len(text) and text[right] != " ":
        space = text.find(" ", right, right + _WORD_SLACK)
        right = space if space != -1 else right
    piece = text[left:right].strip()
    return ("... " if left > 0 else "") + piece + (" ..." if right < len(text) else "")
