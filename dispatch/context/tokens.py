"""Token counting: the one place that decides what a "token" is.

Budgets are only as honest as the counter behind them, so every part of the
context package counts through :func:`count_tokens` and trims through
:func:`trim_to_tokens`.

When ``tiktoken`` is importable *and* its ``cl100k_base`` encoding loads without
the network (its files already cached), it is used.  Otherwise a documented
estimate stands in, built to err on the high side so a budget it enforces is
not exceeded by a real tokenizer either:

* a word piece (``[A-Z]?[a-z]+`` or an upper-case run, so ``assertEqual`` is two
  pieces) counts 1, plus 1 for every 10 letters beyond the first 10;
* a digit run counts 1 per 3 digits (cl100k groups digits in threes);
* an ASCII punctuation run (``_`` included) counts 1 per 2 characters;
* any non-ASCII character counts 1;
* a newline (with the indentation after it) counts 1, a run of 2+ spaces or
  tabs counts 1, a single space counts 0 (BPE merges it into the next word).

On English prose this gives about 1.3 tokens per word, on Python code about
one token per 3.5-4 characters, both close to cl100k.  Set
``DISPATCH_TOKENIZER=estimate`` to force the estimate.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Optional

_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
_LONG_WORD = re.compile(r"[A-Za-z]{11,}")
_DIGITS = re.compile(r"\d+")
_PUNCT = re.compile(r"[!-/:-@\[-`{-~]+")
_NEWLINE = re.compile(r"\n[ \t]*")
_SPACES = re.compile(r"(?<![\n \t])[ \t]{2,}")
_WIDE = re.compile(r"[^\x00-\x7f]")


def estimate_tokens(text: str) -> int:
    """The offline estimate described in the module docstring."""
    if not text:
        return 0
    n = len(_WORD.findall(text))
    n += sum((len(w) - 1) // 10 for w in _LONG_WORD.findall(text))
    n += sum((len(d) + 2) // 3 for d in _DIGITS.findall(text))
    n += sum((len(p) + 1) // 2 for p in _PUNCT.findall(text))
    n += len(_NEWLINE.findall(text)) + len(_SPACES.findall(text))
    n += len(_WIDE.findall(text))
    return n


def _load_tiktoken() -> tuple[str, Optional[Callable[[str], int]]]:
    if os.environ.get("DISPATCH_TOKENIZER", "").lower() == "estimate":
        return "estimate", None
    try:
        import tiktoken  # type: ignore[import-not-found]

        encoding = tiktoken.get_encoding("cl100k_base")
    except Exception:  # not installed, or its files cannot be fetched offline
        return "estimate", None
    return "tiktoken:cl100k_base", lambda text: len(encoding.encode(text, disallowed_special=()))


TOKENIZER, _encode_len = _load_tiktoken()


def count_tokens(text: str) -> int:
    """Tokens in ``text`` by the active tokenizer (see :data:`TOKENIZER`)."""
    if not text:
        return 0
    return _encode_len(text) if _encode_len else estimate_tokens(text)


def trim_to_tokens(text: str, max_tokens: int) -> tuple[str, int, int]:
    """The longest prefix of ``text`` that fits ``max_tokens``, cut at a line end.

    Returns ``(text, tokens, whole_lines_kept)``.  Only when not even the first
    line fits is a line cut inside (then ``whole_lines_kept`` is 0).  The result
    is recounted as a whole, so its count never exceeds ``max_tokens``.
    """
    if max_tokens <= 0 or not text:
        return "", 0, 0
    total = count_tokens(text)
    if total <= max_tokens:
        return text, total, text.count("\n") + (0 if text.endswith("\n") else 1)
    lines = text.splitlines(keepends=True)
    kept, used = 0, 0
    for line in lines:
        cost = count_tokens(line)
        if used + cost > max_tokens:
            break
        used += cost
        kept += 1
    while kept:
        out = "".join(lines[:kept])
        tokens = count_tokens(out)
        if tokens <= max_tokens:
            return out, tokens, kept
        kept -= 1  # a real tokenizer may not be additive over lines
    return _cut_chars(lines[0], max_tokens)


def _cut_chars(line: str, max_tokens: int) -> tuple[str, int, int]:
    """Binary search for the longest character prefix of one line that fits."""
    lo, hi = 0, len(line)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(line[:mid]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    out = line[:lo]
    return out, count_tokens(out), 0
