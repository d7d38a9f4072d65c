"""BM25 over a small in-memory set of documents (phase 3's gathered items).

The global context holds tens of items, so an inverted index in a dict beats a
round trip to SQLite, and it works when the context came from a saved state
file on a machine without the workspace index.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence


class MiniBM25:
    def __init__(self, docs: Sequence[Sequence[str]], k1: float = 1.2, b: float = 0.75) -> None:
        self.n = len(docs)
        lengths = [len(d) for d in docs]
        avg = (sum(lengths) / self.n) if self.n else 1.0
        self.postings: dict[str, list[tuple[int, int]]] = {}
        for i, doc in enumerate(docs):
            for term, tf in Counter(doc).items():
                self.postings.setdefault(term, []).append((i, tf))
        self.idf = {t: math.log(1 + (self.n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self.postings.items()}
        self.norm = [k1 * (1 - b + b * (length / avg if avg else 0)) for length in lengths]
        self.k1 = k1

    def scores(self, query_terms: Iterable[str], only: set[int] | None = None) -> dict[int, float]:
        """``{doc index: score}`` for docs matching at least one term (restricted to ``only``)."""
        out: dict[int, float] = {}
        for term in set(query_terms):
            postings = self.postings.get(term)
            if not postings:
                continue
            idf = self.idf[term]
            for doc, tf in postings:
                if only is not None and doc not in only:
                    continue
                out[doc] = out.get(doc, 0.0) + idf * tf * (self.k1 + 1) / (tf + self.norm[doc])
        return out

    def matched_terms(self, query_terms: Iterable[str], doc: int) -> list[str]:
        """Which of ``query_terms`` occur in ``doc`` (for a report's reason)."""
        return [t for t in dict.fromkeys(query_terms) if any(d == doc for d, _ in self.postings.get(t, ()))]
