"""A large breakdown's tasks held as compact JSON, one string per task, instead of ``TaskSpec`` objects.

Why: a ``TaskSpec`` costs about 1.8 KB in memory and its compact JSON about a
tenth of that, so a client that holds a 100k-task run's input as objects
needs 180 MB before anything is submitted.  ``CompactTasks`` is a read-only
sequence of ``TaskSpec`` that builds each one when it is read (and forgets it),
and hands its JSON as it is to whatever writes the state (``store.state``).
Consumers that iterate it see exactly the tasks they would have seen in a list.

``split_tasks`` reads a breakdown's JSON text without building the whole tree:
its top-level values are decoded one by one and the ``tasks`` array one
element at a time, each validated and kept as compact JSON.  It answers None
at the first thing it does not expect (any fault at all): the caller then
takes the whole-document path, which names the fault exactly as before.
"""
from __future__ import annotations

import json
from json.decoder import WHITESPACE  # type: ignore[attr-defined]
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, overload

from pydantic import TypeAdapter, ValidationError

from dispatch.models import UNCACHED_JSON, TaskSpec

_TASKS = TypeAdapter(list[TaskSpec], config=UNCACHED_JSON)  # no string cache: see UNCACHED_JSON

COMPACT_FROM = 1000  # breakdowns of more tasks than this are held as ``CompactTasks``
CHUNK = 1000  # tasks per JSON array text: a few large strings, not a small one per task


class CompactTasks(Sequence[TaskSpec]):
    """Tasks as compact JSON (``TaskSpec.model_dump_json()``), ``CHUNK`` to a JSON array text, read back a
    chunk at a time.  Few large strings rather than one per task: freed as a whole, they leave no
    fragmented heap behind."""

    def __init__(self, items: Iterable[str] = ()) -> None:
        self.chunks: list[str] = []
        self.count = 0
        pending: list[str] = []
        for item in items:
            pending.append(item)
            if len(pending) >= CHUNK:
                self._close(pending)
                pending = []
        if pending:
            self._close(pending)

    def _close(self, pending: list[str]) -> None:
        self.chunks.append("[" + ",".join(pending) + "]")
        self.count += len(pending)

    @classmethod
    def of(cls, tasks: Iterable[TaskSpec]) -> "CompactTasks":
        return cls(t.model_dump_json() for t in tasks)

    def __len__(self) -> int:
        return self.count

    @overload
    def __getitem__(self, index: int) -> TaskSpec: ...
    @overload
    def __getitem__(self, index: slice) -> list[TaskSpec]: ...

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return list(self)[index]
        if index < 0:
            index += self.count
        if not 0 <= index < self.count:
            raise IndexError("task index out of range")
        return _TASKS.validate_json(self.chunks[index // CHUNK])[index % CHUNK]

    def __iter__(self) -> Iterator[TaskSpec]:
        for chunk in self.chunks:
            yield from _TASKS.validate_json(chunk)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CompactTasks):
            return self.chunks == other.chunks
        return isinstance(other, list) and len(other) == len(self) and all(a == b for a, b in zip(self, other))

    def json_chunks(self) -> Iterator[str]:
        """The tasks' JSON, as arrays of up to ``CHUNK`` tasks' compact JSON (the store keeps them so)."""
        return iter(self.chunks)

    def json_parts(self) -> Iterator[str]:
        """The JSON array of every task, in pieces."""
        yield "["
        for i, chunk in enumerate(self.chunks):
            yield ("," if i else "") + chunk[1:-1]
        yield "]"

    def one_per_agent(self) -> list[TaskSpec]:
        """The first task of each agent name, in input order: all a question about agents needs."""
        first: dict[str, TaskSpec] = {}
        for task in self:
            first.setdefault(task.agent, task)
        return list(first.values())

    def __repr__(self) -> str:
        return f"CompactTasks({self.count} tasks)"


def split_tasks(text: str, decode: Callable[[str, int], tuple[Any, int]],
                check: Callable[[Any, str, int], Optional[str]]) -> Optional[tuple[dict[str, Any], CompactTasks]]:
    """The breakdown in ``text`` as (every top-level value but ``tasks``, the tasks as ``CompactTasks``).

    ``decode(text, index)``: one JSON value from ``index`` -> (value, end) (the input's number hooks).
    ``check(value, path, depth)``: the input limits on one value -> a fault or None.  None: anything
    unexpected (malformed, a limit, a task that does not validate, no task list): the whole-document
    path says what.
    """
    try:
        return _split(text, decode, check)
    except (ValueError, RecursionError, ValidationError, IndexError, StopIteration):
        return None


def _split(text: str, decode: Callable[[str, int], tuple[Any, int]],
           check: Callable[[Any, str, int], Optional[str]]) -> Optional[tuple[dict[str, Any], CompactTasks]]:
    ws = WHITESPACE.match
    i = ws(text, 0).end()
    if text[i:i + 1] != "{":
        return None
    head: dict[str, Any] = {}
    tasks: Optional[CompactTasks] = None
    i = ws(text, i + 1).end()
    while True:
        key, i = decode(text, i)
        if not isinstance(key, str) or key in head or (key == "tasks" and tasks is not None):
            return None  # a repeated key: the whole-document path keeps json's last-one-wins meaning
        i = ws(text, i).end()
        if text[i] != ":":
            return None
        i = ws(text, i + 1).end()
        if key == "tasks":
            if text[i] != "[":
                return None
            tasks, i = _split_array(text, ws(text, i + 1).end(), decode, check)
            if tasks is None:
                return None
        else:
            value, i = decode(text, i)
            if check(value, key, 2) is not None:
                return None
            head[key] = value
        i = ws(text, i).end()
        if text[i] == "}":
            break
        if text[i] != ",":
            return None
        i = ws(text, i + 1).end()
    if text[ws(text, i + 1).end():] or tasks is None or not tasks:
        return None
    return head, tasks


def _split_array(text: str, i: int, decode: Callable[[str, int], tuple[Any, int]],
                 check: Callable[[Any, str, int], Optional[str]]) -> tuple[Optional["CompactTasks"], int]:
    ws = WHITESPACE.match
    items = CompactTasks()
    pending: list[str] = []
    if text[i] == "]":
        return items, i + 1
    while True:
        raw, i = decode(text, i)
        if not isinstance(raw, dict) or check(raw, f"tasks[{items.count + len(pending)}]", 3) is not None:
            return None, i
        pending.append(TaskSpec.model_validate(raw).model_dump_json())
        if len(pending) >= CHUNK:
            items._close(pending)
            pending = []
        i = ws(text, i).end()
        if text[i] == "]":
            if pending:
                items._close(pending)
            return items, i + 1
        if text[i] != ",":
            return None, i
        i = ws(text, i + 1).end()


def json_chunks(tasks: Iterable[TaskSpec], size: int = CHUNK) -> Iterator[str]:
    """The tasks' compact JSON as arrays of ``size``, from a list or a ``CompactTasks`` alike."""
    if isinstance(tasks, CompactTasks) and size == CHUNK:
        return tasks.json_chunks()
    return _chunks(tasks, size)


def _chunks(tasks: Iterable[TaskSpec], size: int) -> Iterator[str]:
    pending: list[str] = []
    for task in tasks:
        pending.append(task.model_dump_json())
        if len(pending) >= size:
            yield "[" + ",".join(pending) + "]"
            pending = []
    if pending:
        yield "[" + ",".join(pending) + "]"


__all__ = ["CHUNK", "COMPACT_FROM", "CompactTasks", "json_chunks", "split_tasks"]
