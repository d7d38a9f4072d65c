"""Term roots of a text: the vocabulary the ``rules`` validator compares.

Deliberately light: lower-cased words split on camelCase, snake_case and
kebab-case, stopwords and generic task verbs removed, one suffix stripped.
Two terms match when they are equal or, both at least four letters, one is a
prefix of the other, so ``postgres``/``PostgreSQL`` and ``auth``/``authentication``
meet without a dictionary.  Good enough to catch a breakdown about something
else entirely; judging nuance is the models' job.
"""
from __future__ import annotations

from typing import Iterable

from dispatch.common.text import STOPWORDS as ENGLISH_STOPWORDS, words

# Numbers are spelled out in breakdowns ("three services") without saying what is built.
STOPWORDS = ENGLISH_STOPWORDS | {"three", "four", "five"}

# Verbs and nouns every breakdown uses: they say nothing about *what* is built.
GENERIC = frozenset("""
build building built create creating created implement implementing implemented implementation add adding
make making write writing generate generating generated develop developing set setup update ensure
support need needs want task tasks step steps work thing things handle run perform provide define new
using use used basic simple proper properly appropriate based include including complete full small
""".split())

ALIASES = {"pg": "postgres", "postgresql": "postgres", "psql": "postgres", "db": "database",
           "auth": "authentication", "authn": "authentication", "k8s": "kubernetes",
           "repo": "repository", "config": "configuration", "env": "environment"}

_SUFFIXES = ("ational", "ation", "ments", "ment", "ness", "ings", "ing", "ies", "ied", "ers", "er", "ed", "ly")


def stem(word: str) -> str:
    """Strip one common suffix, keeping at least three letters."""
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        if word.endswith("es") and word[-3] in "sxz" or word.endswith(("ches", "shes")):
            return word[:-2]
        if not word.endswith(("ies", "ers", "ings", "ments")):
            return word[:-1]
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            base = word[: -len(suffix)]
            return base + "y" if suffix in ("ies", "ied") else base
    return word


def term_roots(text: str) -> dict[str, str]:
    """Root -> the first word it came from (for messages), stop words and generic verbs removed.

    Words are ``common.text.words`` split into camelCase parts
    (``UserAuthentication`` -> user, authentication), known names kept whole
    (PostgreSQL is one name, not Postgre + SQL) and mapped through ``ALIASES``.
    """
    roots: dict[str, str] = {}
    for word in words(text, whole=False, unsplit=ALIASES):
        word = ALIASES.get(word, word)
        if len(word) < 2 or not word[0].isalpha() or word in STOPWORDS or word in GENERIC:
            continue
        root = stem(word)
        if root in STOPWORDS or root in GENERIC:
            continue
        roots.setdefault(root, word)
    return roots


def match(a: str, b: str) -> bool:
    if a == b:
        return True
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    return len(short) >= 4 and long.startswith(short)


def matches_any(term: str, others: Iterable[str]) -> bool:
    return any(match(term, other) for other in others)
