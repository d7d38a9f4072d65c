"""Reading the task breakdown: JSON text to a validated ``DispatchInput``.

Every fault becomes an ``InputError`` naming where it is (line and column for
malformed JSON, ``tasks[2].dependencies`` for graph faults) so the CLI can exit
2 before anything is submitted.

Limits (README, "Input"): at most ``DISPATCH_MAX_INPUT_BYTES`` (32 MiB) of
text, refused before parsing; at most ``MAX_DEPTH`` levels of nesting; integers
of at most ``MAX_INT_DIGITS`` digits; only finite numbers (no ``NaN``,
``Infinity``, ``1e999``).  Each is exit 2 with the path of the fault, where
Python's own parser would raise ``RecursionError`` or ``ValueError``.  State
files go through the same :func:`load_json` (``dispatch.store.state``).

A breakdown of more than ``COMPACT_FROM`` tasks is read in pieces
(``split_input``): its tasks validated one at a time and kept as
``CompactTasks``, never as a whole JSON tree nor one ``TaskSpec`` each.  Any
fault sends it down the whole-document path, which words it as always.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Optional

from pydantic import ValidationError

from dispatch.config import DEFAULT_MAX_INPUT_BYTES, format_validation_error
from dispatch.errors import InputError, UsageError
from dispatch.models import DispatchInput
from dispatch.pipeline.tasklist import COMPACT_FROM, split_tasks
from dispatch.planning.graph import GraphError, check_graph

# below pydantic-core's own JSON recursion limit (~200), so a state saved from any valid input loads back
MAX_DEPTH = 100
MAX_INT_DIGITS = 100


class _Refused:
    """What the parser hooks put where a number is refused, so the walk after parsing can name its path."""

    __slots__ = ("text", "why")

    def __init__(self, text: str, why: str) -> None:
        self.text, self.why = text, why


def _parse_int(text: str) -> Any:
    digits = len(text.lstrip("-"))
    return _Refused(text, f"an integer of {digits} digits (at most {MAX_INT_DIGITS})") \
        if digits > MAX_INT_DIGITS else int(text)


def _parse_float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _Refused(text, f"the number {text[:20]} is not finite")


def _parse_constant(text: str) -> Any:
    return _Refused(text, f"{text} is not a JSON number")


def max_input_bytes() -> int:
    raw = os.environ.get("DISPATCH_MAX_INPUT_BYTES", "")
    return int(raw) if raw.strip().isdigit() else DEFAULT_MAX_INPUT_BYTES


def load_json(text: str, source: str, error: Callable[[str], UsageError] = InputError,
              malformed: str = "malformed JSON") -> Any:
    """The JSON document in ``text``, within the limits above; a fault is ``error`` naming ``source`` and where."""
    try:
        raw: Any = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except json.JSONDecodeError as exc:
        raise error(f"{source}: {malformed} at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise error(f"{source}: nested deeper than {MAX_DEPTH} levels at {_deep_path(text)}") from None
    fault = _check_tree(raw)
    if fault:
        raise error(f"{source}: {fault}")
    return raw


def _check_tree(raw: Any, path: str = "", depth: int = 1) -> str | None:
    """The first refused number or over-deep container, as ``"path: why"``; one pass, no recursion.
    ``path``, ``depth``: where ``raw`` sits in its document (a value of a breakdown read in pieces)."""
    stack: list[tuple[Any, str, int]] = [(raw, path, depth)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, dict):
            if depth > MAX_DEPTH:
                return f"{where or '(root)'}: nested deeper than {MAX_DEPTH} levels"
            stack.extend((v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in item.items()
                         if isinstance(v, (dict, list, _Refused)))
        elif isinstance(item, list):
            if depth > MAX_DEPTH:
                return f"{where or '(root)'}: nested deeper than {MAX_DEPTH} levels"
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(item)
                         if isinstance(v, (dict, list, _Refused)))
        elif isinstance(item, _Refused):
            return f"{where or '(root)'}: {item.why}"
    return None


def _deep_path(text: str) -> str:
    """Where the nesting passes ``MAX_DEPTH`` (line and column), found by a scan that skips strings."""
    depth, line, col, in_string, escaped = 0, 1, 0, False, False
    for ch in text:
        col += 1
        if ch == "\n":
            line, col = line + 1, 0
        elif in_string:
            escaped, in_string = (not escaped and ch == "\\"), in_string and (escaped or ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return f"line {line}, column {col}"
        elif ch in "]}":
            depth -= 1
    return "(unknown)"


def parse_input(text: str, source: str = "stdin") -> DispatchInput:
    limit = max_input_bytes()
    # ASCII text is as many bytes as characters: no 32 MiB copy made just to count them
    if len(text) > limit or (not text.isascii() and len(text.encode("utf-8", "surrogatepass")) > limit):
        raise InputError(f"{source}: the input is larger than {limit} bytes (DISPATCH_MAX_INPUT_BYTES); "
                         f"split the breakdown into several runs")
    if not text.strip():
        raise InputError(f"{source}: no input (expected a JSON task breakdown with a 'tasks' list)")
    if len(text) >= SPLIT_FROM_CHARS:
        request = split_input(text)
        if request is not None:
            return request
    return validate_input(load_json(text, source), source)


SPLIT_FROM_CHARS = 256 * 1024  # a breakdown this long may be large enough to be read in pieces
_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)


def split_input(text: str) -> Optional[DispatchInput]:
    """A breakdown of more than ``COMPACT_FROM`` tasks read without its whole tree, its tasks kept as
    ``CompactTasks``; None for anything else (fewer tasks, or any fault: ``validate_input`` names it)."""
    split = split_tasks(text, _DECODER.scan_once, _check_tree)
    if split is None or len(split[1]) <= COMPACT_FROM:
        return None
    head, tasks = split
    try:
        request = DispatchInput.model_validate({**head, "tasks": []})
    except ValidationError:
        return None
    request.tasks = tasks  # type: ignore[assignment]  # a read-only sequence of the same tasks
    try:
        check_graph(request.tasks)
    except GraphError:
        return None
    return request


def validate_input(raw: Any, source: str = "input") -> DispatchInput:
    if not isinstance(raw, dict):
        raise InputError(f"{source}: expected a JSON object with a 'tasks' list, got {type(raw).__name__}")
    if "tasks" not in raw:
        raise InputError(f"{source}: tasks: field required (a list of {{task_id, agent, description}})")
    if isinstance(raw.get("tasks"), list) and not raw["tasks"]:
        raise InputError(f"{source}: tasks: the list is empty; nothing to dispatch")
    try:
        request = DispatchInput.model_validate(raw)
    except ValidationError as exc:
        raise InputError(f"{source}: {format_validation_error(exc)}") from None
    try:
        check_graph(request.tasks)
    except GraphError as exc:
        raise InputError(f"{source}: {exc}") from None
    return request


def input_json_schema() -> dict[str, Any]:
    """JSON Schema of the input, for ``dispatch schema``."""
    schema = DispatchInput.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "dispatch task breakdown"
    return schema
