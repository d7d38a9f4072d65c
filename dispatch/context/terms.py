"""Turning text into search terms, FTS5 queries and derived RAG queries.

Everything that reads user text for searching goes through here, so the index
query, the phase 3 scorer and the derived queries all agree on what a term is:
an alphanumeric run (``_`` separates, as in SQLite's ``unicode61`` tokenizer),
lower-cased, with camelCase parts added (``GlobalContext`` -> ``globalcontext``,
``global``, ``context``) and stop words dropped.
"""
from __future__ import annotations

import re
from typing import Iterable

from dispatch.common.text import STOPWORDS as ENGLISH_STOPWORDS, terms as distinct_terms, words
from dispatch.models import DispatchInput

# Besides English function words: instruction verbs ("generate two nodes") and
# the most common programming keywords.  They match nearly every chunk, cost the
# most to rank, and say nothing about which chunk is wanted.
STOPWORDS = ENGLISH_STOPWORDS | frozenset("""
get gets got made makes many need needs use used uses using
add adds create creates ensure generate generates implement implements make new
def self return import none true false null var const elif endif fi
""".split())

MAX_QUERY_TERMS = 12


def stem(term: str) -> str:
    """A light suffix stripper (``patterns`` -> ``pattern``, ``retries`` -> ``retry``).

    Used only by the in-memory phase 3 scorer; the SQLite index stems with
    Porter itself.  Deliberately timid: it only folds plural and common verb
    endings, so distinct words are not conflated.
    """
    if len(term) <= 4 or term.isdigit():
        return term
    if term.endswith("ies"):
        return term[:-3] + "y"
    if term.endswith(("sses", "shes", "ches", "xes")):
        return term[:-2]
    if term.endswith("s") and not term.endswith(("ss", "us", "is")):
        return term[:-1]
    if term.endswith("ing") and len(term) > 6:
        return term[:-3]
    if term.endswith("ed") and len(term) > 5:
        return term[:-2]
    return term


def query_terms(text: str, limit: int | None = None) -> list[str]:
    """Distinct meaningful terms of ``text``, in first-seen order (camelCase runs whole and in parts)."""
    return distinct_terms(text, stopwords=STOPWORDS, limit=limit)


def scoring_terms(text: str) -> list[str]:
    """Stemmed terms with repetition kept (for term frequencies)."""
    return [stem(t) for t in words(text) if len(t) > 1 and t not in STOPWORDS]


def fts_query(text: str) -> str | None:
    """A safe FTS5 MATCH expression for free text, or ``None`` if it has no terms.

    Each term is double-quoted (quotes inside doubled) so no user text is ever
    read as FTS5 syntax; terms are OR-ed so BM25 ranks chunks matching more of
    them higher, and for 2-4 term queries the whole phrase is OR-ed in too, so a
    chunk with the words side by side gets an extra phrase contribution.  If
    every term is a stop word the stop words are used rather than nothing.
    """
    terms = query_terms(text, MAX_QUERY_TERMS)
    if not terms:
        terms = list(dict.fromkeys(t for t in words(text) if len(t) > 1))[:MAX_QUERY_TERMS]
    if not terms:
        return None
    parts = [quote_term(t) for t in terms]
    phrase = [t for t in words(text, parts=False) if t not in STOPWORDS]
    if 2 <= len(phrase) <= 4:
        parts.insert(0, quote_term(" ".join(phrase)))
    return " OR ".join(parts)


def quote_term(term: str) -> str:
    """One FTS5 string token: double-quoted, inner quotes doubled."""
    return '"' + term.replace('"', '""') + '"'


def derive_queries(request: DispatchInput, max_queries: int = 8, terms_per_query: int = 6) -> list[str]:
    """The queries phase 0 runs: ``rag_queries`` when given, else derived.

    Derived queries come from the user prompt (one per sentence or line) and
    then each task's description, in order, each reduced to its first
    ``terms_per_query`` key terms.  A query whose terms are all covered by an
    earlier one is dropped, and at most ``max_queries`` are kept.
    """
    given = [q.strip() for q in request.rag_queries if q and q.strip()]
    if given:
        return list(dict.fromkeys(given))
    sources: list[str] = [s for s in re.split(r"(?<=[.!?;])\s+|\n+", request.user_prompt) if s.strip()]
    sources += [task.description for task in request.tasks]
    return _distinct_queries(sources, max_queries, terms_per_query)


def _distinct_queries(sources: Iterable[str], max_queries: int, terms_per_query: int) -> list[str]:
    queries: list[str] = []
    covered: list[frozenset[str]] = []
    for text in sources:
        terms = query_terms(text, terms_per_query)
        if not terms:
            continue
        bag = frozenset(terms)
        if any(bag <= seen for seen in covered):
            continue
        queries.append(" ".join(terms))
        covered.append(bag)
        if len(queries) >= max_queries:
            break
    return queries
