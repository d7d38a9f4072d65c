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

from dispatch.models import DispatchInput

_RUN = re.compile(r"[^\W_]+")
_CAMEL = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")

# English function words, instruction verbs ("generate two nodes") and the most
# common programming keywords: they match nearly every chunk, cost the most to
# rank, and say nothing about which chunk is wanted.
STOPWORDS = frozenset("""
a about above after again all also am an and any are as at be because been before being
below between both but by can could did do does doing done down during each either else
etc even every few for from further get gets got had has have having he her here hers him
his how i if in into is it its itself just let like made make makes many may me might
more most much must my need needs no nor not now of off on once one only or other our
ours out over own per please same shall she should so some such than that the their
theirs them then there these they this those through thus to too two under until up upon
us use used uses using very via was we were what when where which while who whom why
will with within without would yes yet you your yours
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


def words(text: str) -> list[str]:
    """All terms of ``text`` in order, lower-cased, camelCase parts added, stop words kept."""
    out: list[str] = []
    for run in _RUN.findall(text):
        low = run.lower()
        out.append(low)
        if not run.islower() and not run.isupper():
            parts = _CAMEL.findall(run)
            if len(parts) > 1:
                out.extend(p.lower() for p in parts)
    return out


def key_terms(text: str, limit: int | None = None) -> list[str]:
    """Distinct meaningful terms of ``text``, in first-seen order."""
    seen: dict[str, None] = {}
    for term in words(text):
        if len(term) < 2 or term in STOPWORDS or term in seen:
            continue
        seen[term] = None
        if limit and len(seen) >= limit:
            break
    return list(seen)


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
    terms = key_terms(text, MAX_QUERY_TERMS)
    if not terms:
        terms = list(dict.fromkeys(t for t in words(text) if len(t) > 1))[:MAX_QUERY_TERMS]
    if not terms:
        return None
    parts = [quote_term(t) for t in terms]
    phrase = [t for t in (r.lower() for r in _RUN.findall(text)) if t not in STOPWORDS]
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
        terms = key_terms(text, terms_per_query)
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
