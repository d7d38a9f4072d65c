"""Token counting: the one place that decides what a "token" is.

Budgets are only as honest as the counter behind them, so every part of the
context package counts through :func:`count_tokens` and trims through
:func:`trim_to_tokens`.

When ``tiktoken`` is importable *and* its ``cl100k_base`` encoding loads without
the network (its file already in tiktoken's cache, ``TIKTOKEN_CACHE_DIR``), it
is used.  tiktoken would download a missing file, so its loader is given a
reader that refuses URLs for that one call: dispatch never touches the network
to count tokens, and nothing is loaded before the first count (or the first
read of ``TOKENIZER``, kept for the modules that import it).  Otherwise a
documented estimate stands in, built to err on the high side so a budget it enforces is
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
import threading
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
        import tiktoken.load as loader  # type: ignore[import-not-found]
    except Exception:  # not installed (or broken): the estimate
        return "estimate", None
    read_file = loader.read_file

    def offline(blobpath: str) -> bytes:  # a cache miss would download: refuse it
        if "://" in blobpath:
            raise OSError(f"not fetching {blobpath}: dispatch counts tokens offline")
        return read_file(blobpath)

    loader.read_file = offline
    try:
        encoding = tiktoken.get_encoding("cl100k_base")
    except Exception:  # its file is not cached (or is corrupt)
        return "estimate", None
    finally:
        loader.read_file = read_file
    return "tiktoken:cl100k_base", lambda text: len(encoding.encode(text, disallowed_special=()))


_LOCK = threading.Lock()
_ACTIVE: Optional[tuple[str, Optional[Callable[[str], int]]]] = None


def _active() -> tuple[str, Optional[Callable[[str], int]]]:
    """The tokenizer, chosen at the first count (not at import: importing must stay cheap and offline)."""
    global _ACTIVE
    if _ACTIVE is None:
        with _LOCK:
            if _ACTIVE is None:
                _ACTIVE = _load_tiktoken()
    return _ACTIVE


def tokenizer_name() -> str:
    """``tiktoken:cl100k_base`` or ``estimate``: what ``count_tokens`` uses in this process."""
    return _active()[0]


def __getattr__(name: str) -> str:
    """``TOKENIZER``, the former module constant, computed on first use."""
    if name == "TOKENIZER":
        return tokenizer_name()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def count_tokens(text: str) -> int:
    """Tokens in ``text`` by the active tokenizer (see :func:`tokenizer_name`)."""
    if not text:
        return 0
    encode_len = _active()[1]
    return encode_len(text) if encode_len else estimate_tokens(text)


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
