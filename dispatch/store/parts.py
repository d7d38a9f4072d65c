"""The parts of a large run's state kept apart from it in Redis, and read back only when asked for.

Why: a 100k-task state is about 33 MB of JSON and 750 MB as objects; nearly
all of it is ``tasks_data``, ``plan``, ``task_contexts`` and ``task_results``,
which a client following the run never reads (it reports progress and prints
the results, a chunk at a time).  ``state.RedisStateStore`` stores them beside
the state (zlib chunks in two hashes, ``<run>:results`` and ``<run>:parts``);
``load_lean`` hands a state whose heavy fields are these stand-ins:

- ``StoredList``: a sized iterable of models read a chunk at a time from a
  hash (``StoredResults`` for task results, ``StoredTasks`` for the tasks);
- ``StoredValue``: a field's compressed JSON, decoded when first used.

Each gives its JSON text in pieces (``json_parts``), so a state that holds
them is written (``write_json``: the file, the packed form) without building them.
"""
from __future__ import annotations

import zlib
from typing import Any, Callable, Iterable, Iterator, Optional

from pydantic import TypeAdapter, ValidationError

from dispatch.errors import StateFileError
from dispatch.models import UNCACHED_JSON, PhaseState, TaskContext, TaskPlan, TaskResult, TaskSpec

ZLIB_LEVEL = 1  # the fastest level: a 100k-task state packs in well under a second, about 10x smaller
RESULTS_CHUNK = 1000  # results (and tasks) per stored chunk

# pydantic-core's string cache off at the top of each (``models.UNCACHED_JSON``: it pins a parse's heap)
_RESULT_LIST = TypeAdapter(list[TaskResult], config=UNCACHED_JSON)
_TASK_LIST = TypeAdapter(list[TaskSpec], config=UNCACHED_JSON)
PLAN = TypeAdapter(Optional[TaskPlan], config=UNCACHED_JSON)
CONTEXTS = TypeAdapter(dict[str, TaskContext], config=UNCACHED_JSON)


def compress(text: str) -> bytes:
    return zlib.compress(text.encode("utf-8"), ZLIB_LEVEL)


def decompress(raw: Optional[bytes], what: str, source: str) -> str:
    if raw is None:
        raise StateFileError(f"{source}: {what} is missing (expired or deleted)")
    try:
        return zlib.decompress(raw).decode("utf-8")
    except (zlib.error, UnicodeDecodeError) as exc:
        raise StateFileError(f"{source}: corrupt stored {what} ({exc})") from None


class StoredList:
    """Models left in a Redis hash in chunks (fields ``<field>0``..): iterable a chunk read at a time, and
    sized like the list they stand for.  Anything that needs them all at once makes ``list(...)`` of it."""

    adapter: TypeAdapter = _RESULT_LIST
    what = "task results"

    def __init__(self, client: Any, key: str, count: int, chunks: int, source: str, field: str = "") -> None:
        self.client, self.key, self.count, self.chunks, self.source = client, key, count, chunks, source
        self.field = field

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def _text(self, index: int) -> str:
        raw = self.client.hget(self.key, f"{self.field}{index}")
        if raw is None:
            raise StateFileError(f"{self.source}: {self.what} chunk {index} is missing (expired or deleted)")
        return decompress(raw, f"{self.what}, chunk {index}", self.source)

    def __iter__(self) -> Iterator[Any]:
        for i in range(self.chunks):
            try:
                yield from self.adapter.validate_json(self._text(i))
            except ValidationError as exc:
                raise StateFileError(f"{self.source}: corrupt stored {self.what}, chunk {i} ({exc})") from None

    def json_parts(self) -> Iterator[str]:
        """The JSON array they stand for, in pieces (a chunk's text at a time, never parsed)."""
        yield "["
        first = True
        for i in range(self.chunks):
            inner = self._text(i).strip()[1:-1]
            if inner:
                yield inner if first else "," + inner
                first = False
        yield "]"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.count} {self.what} in {self.key})"


class StoredResults(StoredList):
    adapter = _RESULT_LIST
    what = "task results"


class StoredTasks(StoredList):
    adapter = _TASK_LIST
    what = "tasks"


def tasks_in_memory(state: Optional[PhaseState]) -> Optional[PhaseState]:
    """``state`` (as ``load_lean`` reads it) with its tasks read into a list: for a reader that goes over
    them several times (phase 4's close), while its plan and contexts stay packed until something uses them."""
    if state is not None and isinstance(state.tasks_data, StoredTasks):
        state.tasks_data = list(state.tasks_data)
    return state


class StoredValue:
    """One field's JSON, compressed as stored; decoded (``value``) the first time it is used."""

    def __init__(self, raw: bytes, adapter: TypeAdapter, what: str, source: str) -> None:
        self.raw, self.adapter, self.what, self.source = raw, adapter, what, source
        self._value: Any = None
        self._decoded = False

    def text(self) -> str:
        return decompress(self.raw, self.what, self.source)

    def json_parts(self) -> Iterator[str]:
        yield self.text()

    def value(self) -> Any:
        if not self._decoded:
            try:
                self._value = self.adapter.validate_json(self.text())
            except ValidationError as exc:
                raise StateFileError(f"{self.source}: corrupt stored {self.what} ({exc})") from None
            self._decoded = True
        return self._value

    # read like the model or dict it stands for (a caller that does read it pays for it then)
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("raw", "adapter", "what", "source"):
            raise AttributeError(name)
        return getattr(self.value(), name)

    def __len__(self) -> int:
        return len(self.value())

    def __iter__(self) -> Iterator[Any]:
        return iter(self.value())

    def __contains__(self, item: object) -> bool:
        return item in self.value()

    def __getitem__(self, key: Any) -> Any:
        return self.value()[key]

    def __bool__(self) -> bool:
        return bool(self.value())

    def __eq__(self, other: object) -> bool:
        return self.value() == (other.value() if isinstance(other, StoredValue) else other)

    def __repr__(self) -> str:
        return f"StoredValue({self.what}, {len(self.raw)} bytes packed)"


def is_apart(value: Any) -> bool:
    """A stand-in (or a ``CompactTasks``): written from its JSON pieces, not dumped by pydantic."""
    return value is not None and not isinstance(value, (list, dict)) and hasattr(value, "json_parts")


def list_chunks(items: Iterable[str], size: int = RESULTS_CHUNK) -> Iterator[bytes]:
    """zlib chunks of ``size`` items' compact JSON each, as JSON arrays."""
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield compress("[" + ",".join(chunk) + "]")
            chunk = []
    if chunk:
        yield compress("[" + ",".join(chunk) + "]")


def results_chunks(results: Iterable[TaskResult], size: int) -> Iterator[bytes]:
    """zlib chunks of ``size`` results each, as compact JSON arrays; only one chunk is held as objects."""
    return list_chunks((r.model_dump_json() for r in results), size)


def read_chunk(raw: Optional[bytes], index: int, source: str) -> list[TaskResult]:
    try:
        return _RESULT_LIST.validate_json(decompress(raw, f"task results chunk {index}", source))
    except ValidationError as exc:
        raise StateFileError(f"{source}: corrupt stored task results, chunk {index} ({exc})") from None


RESULTS = "task_results"
APART = ("tasks_data", "plan", "task_contexts")  # what a run of more than ``INLINE_TASKS`` keeps apart


def write_json(state: PhaseState, write: Callable[[str], Any], indent: Optional[int] = None,
               exclude: Iterable[str] = ()) -> None:
    """The state's JSON through ``write``, in pieces.  A list field holding an iterable instead (a
    ``StoredResults``, ``StoredTasks``, ``CompactTasks``, phase 4's streamed results) and a field holding a
    ``StoredValue`` are spliced in after the others, from their JSON text where they have it, else an item
    at a time: never built whole.  Re-read, it is the same state whichever they hold."""
    left_out = set(exclude)
    spliced = [n for n in (*APART, RESULTS) if n not in left_out and _streamed(n, getattr(state, n))]
    if not spliced:
        write(state.model_dump_json(indent=indent, exclude=left_out or None))
        return
    head = state.model_dump_json(indent=indent, exclude=left_out | set(spliced))
    write(head[:-1] if indent is None else head[:-2])  # the head ends "}" (indented: "\n}")
    for name in spliced:
        value = getattr(state, name)
        write(f',"{name}":' if indent is None else f',\n  "{name}": ')
        if isinstance(value, StoredValue):
            write(value.text())  # compact in an indented file too: indentation aside, the same JSON
        elif indent is None and is_apart(value):
            for piece in value.json_parts():
                write(piece)
        elif indent is None:
            _write_compact(write, value)
        else:
            _write_items(write, value)
    write("}" if indent is None else "\n}")


LIST_FIELDS = ("tasks_data", RESULTS)


def _streamed(name: str, value: Any) -> bool:
    return not isinstance(value, list) if name in LIST_FIELDS else isinstance(value, StoredValue)


def _write_compact(write: Callable[[str], Any], items: Iterable[Any]) -> None:
    write("[")
    for i, item in enumerate(items):
        write(("," if i else "") + item.model_dump_json())
    write("]")


def _write_items(write: Callable[[str], Any], items: Iterable[Any]) -> None:
    """A list of models as ``model_dump_json(indent=2)`` writes a list field, one item at a time."""
    write("[")
    count = 0
    for count, item in enumerate(items, 1):
        write(("," if count > 1 else "") + "\n    " + item.model_dump_json(indent=2).replace("\n", "\n    "))
    write("\n  ]" if count else "]")


def value_text(value: Any, adapter: TypeAdapter) -> str:
    """A field's compact JSON, from its value or its stand-in."""
    if isinstance(value, StoredValue):
        return value.text()
    return adapter.dump_json(value).decode("utf-8")


__all__ = ["APART", "CONTEXTS", "PLAN", "RESULTS", "RESULTS_CHUNK", "StoredList", "StoredResults", "StoredTasks", "StoredValue",
           "ZLIB_LEVEL", "compress", "is_apart", "list_chunks", "read_chunk", "results_chunks", "value_text",
           "write_json"]
