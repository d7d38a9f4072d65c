"""Small text helpers every layer needs, written once: decode, clip, truncate, tabulate, tokenize, find JSON.

Each was written several times before, each copy a little different (one
counted the ellipsis in the limit, one did not; one table clipped, one did not).
Callers pick the helper whose name says what they want; the choices of a phase
(which words are stop words to it, how it stems) stay with the phase.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterable, Optional, Sequence, Union, overload

# ------------------------------------------------------------------ decoding
Bytes = Union[bytes, bytearray, memoryview]


@overload
def as_text(value: Union[str, Bytes], errors: str = ...) -> str: ...
@overload
def as_text(value: None, errors: str = ...) -> None: ...
def as_text(value: Union[str, Bytes, None], errors: str = "replace") -> Optional[str]:  # noqa: E302
    """``value`` as ``str``: bytes are UTF-8 (bad bytes replaced unless ``errors="strict"``), str and None pass."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors)
    return value


# ---------------------------------------------------------------- shortening
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clip(value: Any, limit: int, marker: str = "…") -> str:
    """``value`` on one line (white space folded), at most ``limit`` characters with the ``marker``."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: max(1, limit - len(marker))] + marker


def strip_control(text: Optional[str]) -> str:
    """``text`` without control characters (newlines and tabs kept): nothing can reach a terminal as an escape."""
    return _CONTROL.sub("", str(text)) if text else ""


def one_line(text: Optional[str], limit: int = 120) -> str:
    """The first line of ``text``, control characters removed, clipped: safe for one table cell.

    Errors and descriptions come from agents and users: a cell must not carry a
    newline or a terminal escape sequence.  `` …`` says more lines followed.
    """
    lines = str(text or "").strip().splitlines()
    if not lines:
        return ""
    return clip(strip_control(lines[0]) + (" …" if len(lines) > 1 else ""), limit)


def truncate(text: str, limit: int, *, keep_tail: bool = False) -> str:
    """``text`` cut to ``limit`` characters, line breaks kept, saying how much was cut.

    ``keep_tail`` keeps the last third as well (results and errors tend to sit at the end).
    """
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    if not keep_tail:
        return f"{text[:limit]}... [{cut} more chars]"
    head = limit * 2 // 3
    tail = text[len(text) - (limit - head):]
    return f"{text[:head]}\n... [{cut} chars truncated] ...\n{tail}"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Iterable[int] = (),
               indent: str = "  ", rule: bool = False, width: Optional[int] = None,
               cell_limit: Optional[int] = None) -> list[str]:
    """Rows aligned under ``headers``, one line each.

    ``right``: indexes of right-aligned (numeric) columns; ``rule``: a line of
    dashes under the headers; ``cell_limit``: cells of all but the last column
    are clipped to it; ``width``: the last column gets what the line width
    leaves (clipped to it).  Cells are used as given unless a limit applies.
    """
    right = set(right)
    cells = [[str(c) for c in row] for row in rows]
    if cell_limit is not None:
        cells = [[clip(c, cell_limit) for c in row[:-1]] + [clip(row[-1], 10_000)] for row in cells]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if width is not None and headers:
        used = sum(widths[:-1]) + 2 * (len(headers) - 1) + len(indent)
        widths[-1] = max(len(headers[-1]), min(widths[-1], width - used))
        cells = [r[:-1] + [clip(r[-1], widths[-1])] for r in cells]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return (indent + "  ".join(padded)).rstrip()

    return [line(headers)] + ([line(["-" * w for w in widths])] if rule else []) + [line(r) for r in cells]


# -------------------------------------------------------------------- terms
# English function words: they match nearly everything and say nothing.  A
# phase adds its own (instruction verbs, programming keywords) to this set.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing done down during each either else etc even every few for
from further had has have having he her here hers him his how i if in into is it its itself just let like
may me might more most much must my no nor not now of off on once one only or other our ours out over own
per please same shall she should so some such than that the their theirs them then there these they this
those through thus to too two under until up upon us very via was we were what when where which while who
whom why will with within without would yes yet you your yours
""".split())

_RUN = re.compile(r"[^\W_]+")
_CAMEL = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def words(text: str, *, whole: bool = True, parts: bool = True, unsplit: Iterable[str] = ()) -> list[str]:
    """The lower-cased words of ``text`` in order, stop words kept.

    A word is an alphanumeric run (``_`` separates, as in SQLite's ``unicode61``
    tokenizer); with ``parts`` a camelCase run also yields its parts, and with
    ``whole`` the run itself comes first (``GlobalContext`` -> ``globalcontext``,
    ``global``, ``context``).  Runs in ``unsplit`` (lower-cased names such as
    ``postgresql``) are never split.
    """
    keep = set(unsplit)
    out: list[str] = []
    for run in _RUN.findall(text or ""):
        low = run.lower()
        split = [] if not parts or run.islower() or run.isupper() or low in keep else _CAMEL.findall(run)
        if len(split) > 1:
            out.extend(([low] if whole else []) + [p.lower() for p in split])
        else:
            out.append(low)
    return out


def terms(text: str, *, stopwords: frozenset[str] = STOPWORDS, limit: Optional[int] = None) -> list[str]:
    """The distinct words of ``text`` that say something (two letters or more, not stop words), first-seen order."""
    seen: dict[str, None] = {}
    for word in words(text):
        if len(word) < 2 or word in stopwords or word in seen:
            continue
        seen[word] = None
        if limit and len(seen) >= limit:
            break
    return list(seen)


# --------------------------------------------------------- JSON in model text
_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def extract_json(text: str) -> dict:
    """The JSON object in a model's answer: bare, in a code fence, or wrapped in prose.

    Raises ``ValueError`` (with a short reason) when there is none.  Reasoning
    blocks (``<think>...</think>``) some local models emit are ignored.
    """
    return _find_json(text, objects_only=True)


def extract_json_value(text: str) -> Any:
    """Any JSON value a model answered, bare or in a code fence, else the object embedded in prose."""
    return _find_json(text, objects_only=False)


def _find_json(text: str, objects_only: bool) -> Any:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty answer")
    text = _THINK.sub("", text).strip()
    for candidate in [text] + [m.group(1).strip() for m in _FENCE.finditer(text)]:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict) or not objects_only:
            return value
    decoder = json.JSONDecoder()
    for match in list(re.finditer(r"\{", text))[:200]:
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError(f"no JSON object in answer: {clip(text, 120)}")
