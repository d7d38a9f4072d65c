"""Key terms of a text: the vocabulary the ``rules`` validator compares.

Deliberately light: lower-cased words split on camelCase, snake_case and
kebab-case, stopwords and generic task verbs removed, one suffix stripped.
Two terms match when they are equal or, both at least four letters, one is a
prefix of the other, so ``postgres``/``PostgreSQL`` and ``auth``/``authentication``
meet without a dictionary.  Good enough to catch a breakdown about something
else entirely; judging nuance is the models' job.
"""
from __future__ import annotations

import re
from typing import Iterable

STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing done down during each either else etc every few for
from further had has have having he her here hers him his how i if in into is it its itself just let
like may me might more most much must my no nor not now of off on once one only or other our ours out
over own per please same shall she should so some such than that the their theirs them then there
these they this those through thus to too two three four five under until up upon us very via was we
were what when where which while who whom why will with within without would yet you your yours
""".split())

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
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")


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


def words(text: str) -> list[str]:
    """Lower-cased words, camelCase split (``UserAuthentication`` -> user, authentication)."""
    out = []
    for token in _WORD.findall(text or ""):
        if token.lower() in ALIASES:  # PostgreSQL is one name, not Postgre + SQL
            out.append(token.lower())
            continue
        out.extend(part.lower() for part in _CAMEL.sub(" ", token).split())
    return out


def key_terms(text: str) -> dict[str, str]:
    """Stem -> the first word it came from (for messages), stopwords and generic verbs removed."""
    terms: dict[str, str] = {}
    for word in words(text):
        word = ALIASES.get(word, word)
        if len(word) < 2 or word in STOPWORDS or word in GENERIC:
            continue
        root = stem(word)
        if root in STOPWORDS or root in GENERIC:
            continue
        terms.setdefault(root, word)
    return terms


def match(a: str, b: str) -> bool:
    if a == b:
        return True
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    return len(short) >= 4 and long.startswith(short)


def matches_any(term: str, others: Iterable[str]) -> bool:
    return any(match(term, other) for other in others)
