"""Where a run's ``PhaseState`` lives between phases and after the run.

Two stores behind one interface: ``RedisStateStore`` for a deployment (the
design's Redis-backed JSON store, keyed by run id, with a TTL) and
``DirectoryStateStore`` for the embedded default (one JSON file per run, so
history survives the process).  State files written by ``--save-phase-state``
use the same atomic write and the same validation.

In Redis a state is kept compacted (``pack_state``): zlib of its compact JSON,
a tenth of the indented text, so a closed 100k-task run costs the server well
under 1 KB per task.  Uncompressed states written before that still load.

A run of more than ``INLINE_RESULTS`` tasks keeps its ``task_results`` apart,
in a hash of zlib chunks beside the state (``<prefix>:run:<id>:results``),
written in the same MULTI; a run of more than ``INLINE_TASKS`` keeps its
``tasks_data``, ``plan`` and ``task_contexts`` apart too (``<...>:parts``).
``load`` reads them back into the state as before; ``load_lean`` leaves them
behind the stand-ins of ``store.parts``, so a follower reports and prints a
100k-task run without ever building its tasks, plan or results as objects.
Files stay one JSON document: ``save_state_file`` streams such parts into it.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from pydantic import ValidationError

from dispatch.config import format_validation_error
from dispatch.errors import StateFileError
from dispatch.models import SCHEMA_VERSION, PhaseState, iso, utcnow
from dispatch.pipeline.inputs import load_json
from dispatch.pipeline.tasklist import json_chunks
from dispatch.planning.graph import GraphError, check_graph
from dispatch.store.keys import Keys
from dispatch.store.parts import (APART, CONTEXTS, PLAN, RESULTS, RESULTS_CHUNK, ZLIB_LEVEL, StoredList, StoredResults,
                                  StoredTasks, StoredValue, compress, results_chunks, write_json)

# a state holds context and results as well as the input: it may be larger than an input, not unbounded
MAX_STATE_FILE_BYTES = 512 * 1024 * 1024


StateChange = Callable[[Optional[PhaseState]], PhaseState]  # the stored state (None: gone) -> what to store
UPDATE_ATTEMPTS = 50  # a Redis update that keeps losing its WATCH race gives up (never seen: 2 writers)


class StateStore(Protocol):
    def save(self, state: PhaseState) -> None: ...
    # read, change and save one run atomically: what two phases saving the same run at once use; ``lean``:
    # ``change`` is given the state as ``load_lean`` reads it (what it does not touch is never built)
    def update(self, run_id: str, change: StateChange, lean: bool = False) -> PhaseState: ...
    def load(self, run_id: str) -> Optional[PhaseState]: ...
    # the same state, its task results possibly left in the store behind a ``StoredResults`` (read-only use)
    def load_lean(self, run_id: str) -> Optional[PhaseState]: ...
    def exists(self, run_id: str) -> bool: ...
    def list_runs(self, limit: int = 20) -> list[PhaseState]: ...
    def describe(self) -> str: ...  # where it looks, for messages: "the folder ..." / "Redis ... (prefix ...)"


def dump_state(state: PhaseState) -> str:
    return state.model_dump_json(indent=2)


def write_state(state: PhaseState, fh: Any) -> None:
    """``dump_state``'s document written to ``fh``, stand-ins streamed into it (see ``write_json``)."""
    write_json(state, fh.write, indent=2)


def parse_state(text: str, source: str) -> PhaseState:
    """Validate a state document; every fault is a ``StateFileError`` naming ``source``.

    The fast path parses and validates in one pass (pydantic-core); only a
    document that fails it is taken apart again to say precisely what is wrong.
    Either way the state is then checked like fresh input (:func:`check_state`).
    """
    try:
        state = PhaseState.model_validate_json(text)
        if state.schema_version == SCHEMA_VERSION and '"phases_executed"' in text:
            return check_state(state, source)
    except ValidationError:
        pass
    return check_state(_diagnose(text, source), source)


def check_state(state: PhaseState, source: str) -> PhaseState:
    """A loaded state's tasks are a graph like fresh input's: duplicate ids, unknown dependencies and
    cycles are a ``StateFileError`` naming ``tasks_data[i]``, and a plan must be of these tasks."""
    try:
        check_graph(state.tasks_data)
    except GraphError as exc:
        message = str(exc)
        raise StateFileError(f"{source}: {'tasks_data' + message[5:] if message.startswith('tasks') else message}") \
            from None
    if state.plan is not None and state.plan.order:
        ids = {t.task_id for t in state.tasks_data}
        strangers = [tid for tid in state.plan.order if tid not in ids]
        if strangers or len(state.plan.order) != len(ids):
            named = f" (unknown task '{strangers[0]}')" if strangers else ""
            raise StateFileError(f"{source}: plan.order: the plan is not of this state's tasks_data{named}; "
                                 f"re-run phase 2")
    return state


def _diagnose(text: str, source: str) -> PhaseState:
    if not text.strip():
        raise StateFileError(f"{source}: empty file, not a dispatch phase state")
    raw: Any = load_json(text, source, StateFileError, "corrupt or truncated JSON")
    if not isinstance(raw, dict) or "phases_executed" not in raw:
        raise StateFileError(f"{source}: not a dispatch phase state (no 'phases_executed')")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StateFileError(f"{source}: state schema_version {version!r} is not supported "
                             f"(this dispatch reads version {SCHEMA_VERSION})")
    try:
        return PhaseState.model_validate(raw)
    except ValidationError as exc:
        raise StateFileError(f"{source}: invalid phase state: {format_validation_error(exc)}") from None


def atomic_write(path: Path, text: str = "", write: Optional[Callable[[Any], None]] = None) -> None:
    """Temp file in the same directory, fsync, rename: a reader never sees half a file.
    ``write``: writes the text to the open file itself (a document too large to hold as one string)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh) if write is not None else fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_state_file(state: PhaseState, path: str | Path) -> None:
    state.saved_at = iso(utcnow())
    try:
        atomic_write(Path(path), write=lambda fh: write_state(state, fh))
    except OSError as exc:
        raise StateFileError(f"{path}: cannot write state ({exc.strerror or exc})") from None


def load_state_file(path: str | Path) -> PhaseState:
    """A state file given by a person: the input's limits (size, depth, digits, finite numbers), the graph
    checked, and no literal credential in its config (a state written by dispatch holds none)."""
    state = read_state_file(path, strict=True)
    found = state.config.inline_secret()
    if found:
        raise StateFileError(f"{path}: config.{found}: a literal credential; states reference secrets by "
                             f"environment variable (\"${{NAME}}\", api_key_env)")
    return state


def read_state_file(path: str | Path, strict: bool = False) -> PhaseState:
    try:
        if Path(path).stat().st_size > MAX_STATE_FILE_BYTES:
            raise StateFileError(f"{path}: larger than {MAX_STATE_FILE_BYTES} bytes, not a state dispatch wrote")
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise StateFileError(f"{path}: cannot read state file ({reason})") from None
    if strict:  # the limits of fresh input, before pydantic sees the document
        if not text.strip():
            raise StateFileError(f"{path}: empty file, not a dispatch phase state")
        load_json(text, str(path), StateFileError, "corrupt or truncated JSON")
    return parse_state(text, str(path))


INLINE_RESULTS = 1000  # a run with more task results than this keeps them apart, in chunks of this many
# a run of more tasks than this keeps its tasks, plan and task contexts apart too: below it a state parses
# into well under 50 MB, and stays one key for the readers of older layouts
INLINE_TASKS = 5000


def pack_state(state: PhaseState, results: bool = True, tasks: bool = True) -> bytes:
    """The stored form in Redis: zlib of the compact JSON (no indentation: nobody reads it there), compressed
    as it is written.  ``results=False``: without ``task_results``; ``tasks=False``: without ``APART``'s
    fields (they are stored apart)."""
    packer = zlib.compressobj(ZLIB_LEVEL)
    out: list[bytes] = []
    exclude = ([] if results else [RESULTS]) + ([] if tasks else list(APART))
    write_json(state, lambda text: out.append(packer.compress(text.encode("utf-8"))), exclude=exclude)
    out.append(packer.flush())
    return b"".join(out)


def unpack_state(raw: bytes | str, source: str) -> str:
    """The JSON text of a stored state, packed or (written by an older dispatch) plain."""
    if isinstance(raw, str):
        return raw
    if raw[:1] == b"{" or not raw.strip():  # plain JSON starts with "{"; zlib's header never does
        return raw.decode("utf-8")
    try:
        return zlib.decompress(raw).decode("utf-8")
    except (zlib.error, UnicodeDecodeError) as exc:
        raise StateFileError(f"{source}: corrupt stored state ({exc})") from None


class DirectoryStateStore:
    """One ``<run_id>.json`` per run under a directory (embedded mode)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _path(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise StateFileError(f"invalid run id {run_id!r}")
        return self.directory / "runs" / f"{run_id}.json"

    def save(self, state: PhaseState) -> None:
        state.saved_at = iso(utcnow())
        state.version += 1
        atomic_write(self._path(state.run_id), write=lambda fh: write_state(state, fh))

    def update(self, run_id: str, change: StateChange, lean: bool = False) -> PhaseState:
        """Under an exclusive lock on ``.<run_id>.lock`` beside the file, which every updater of the run
        takes (the threads of the embedded worker, or processes sharing the folder).  One file: ``lean``
        reads it whole all the same."""
        lock = self._path(run_id).with_name(f".{run_id}.lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                state = change(self.load(run_id))
                self.save(state)
                return state
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def load(self, run_id: str) -> Optional[PhaseState]:
        path = self._path(run_id)
        return read_state_file(path) if path.exists() else None

    def load_lean(self, run_id: str) -> Optional[PhaseState]:
        return self.load(run_id)  # one file: its results come with it

    def exists(self, run_id: str) -> bool:
        return self._path(run_id).exists()

    def describe(self) -> str:
        return f"the folder {(self.directory / 'runs').resolve()}"

    def list_runs(self, limit: int = 20) -> list[PhaseState]:
        files = sorted((self.directory / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        runs = []
        for path in files[:limit]:
            try:
                runs.append(read_state_file(path))
            except StateFileError:
                continue  # a foreign or old file in the directory is not a reason to fail a listing
        return runs


class RedisStateStore:
    """JSON documents in Redis under ``<prefix>:run:<run_id>``, indexed by start time."""

    def __init__(self, client: Any, prefix: str = "dispatch", ttl_s: int = 7 * 24 * 3600,
                 where: str = "Redis") -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.keys = Keys(prefix)
        self.where = where

    def key(self, run_id: str) -> str:
        return self.keys.run(run_id)

    def results_key(self, run_id: str) -> str:
        """The hash of a large run's task results: ``count``, ``chunks`` and the chunks ``0``..``n-1``."""
        return self.keys.run_results(run_id)

    @property
    def index_key(self) -> str:
        return self.keys.runs

    def exists(self, run_id: str) -> bool:
        return bool(self.client.exists(self.key(run_id)))

    def describe(self) -> str:
        return f"{self.where} (key prefix '{self.prefix}')"

    def parts_key(self, run_id: str) -> str:
        """The hash of a very large run's tasks, plan and task contexts: ``tasks``, ``tasks_chunks``, the
        chunks ``tasks:0``..``tasks:<n-1>``, ``plan`` (absent: none) and ``task_contexts``."""
        return self.keys.run_parts(run_id)

    def save(self, state: PhaseState, pipe: Any = None) -> None:
        """``pipe``: a pipeline in MULTI after a WATCH (``update``): the writes are queued on it."""
        state.saved_at = iso(utcnow())
        state.version += 1
        started = utcnow().timestamp()
        pipe = self.client.pipeline() if pipe is None else pipe
        apart = len(state.task_results) > INLINE_RESULTS
        tasks_apart = len(state.tasks_data) > INLINE_TASKS
        if not apart and not isinstance(state.task_results, list):  # a few, streamed: inline as always
            state.task_results = list(state.task_results)
        pipe.set(self.key(state.run_id), pack_state(state, results=not apart, tasks=not tasks_apart),
                 ex=self.ttl_s or None)
        results_key, parts_key = self.results_key(state.run_id), self.parts_key(state.run_id)
        pipe.delete(results_key, parts_key)
        if apart:  # compressed a chunk at a time; the pipeline holds only the compressed bytes until EXEC
            chunks = 0
            for chunks, chunk in enumerate(results_chunks(state.task_results, RESULTS_CHUNK), 1):
                pipe.hset(results_key, str(chunks - 1), chunk)
            pipe.hset(results_key, mapping={"count": len(state.task_results), "chunks": chunks})
        if tasks_apart:
            self._queue_parts(state, pipe, parts_key)
        for key in ((results_key,) if apart else ()) + ((parts_key,) if tasks_apart else ()):
            if self.ttl_s:
                pipe.expire(key, self.ttl_s)
        pipe.zadd(self.index_key, {state.run_id: started}, nx=True)
        if self.ttl_s:  # the index forgets runs older than the TTL, and goes when no run is left
            pipe.zremrangebyscore(self.index_key, "-inf", started - self.ttl_s)
            pipe.expire(self.index_key, self.ttl_s)
        pipe.execute()

    @staticmethod
    def _queue_parts(state: PhaseState, pipe: Any, parts_key: str) -> None:
        chunks = 0
        for chunks, chunk in enumerate(json_chunks(state.tasks_data, RESULTS_CHUNK), 1):
            pipe.hset(parts_key, f"tasks:{chunks - 1}", compress(chunk))
        fields: dict[str, Any] = {"tasks": len(state.tasks_data), "tasks_chunks": chunks}
        for name, adapter in (("plan", PLAN), ("task_contexts", CONTEXTS)):
            value = getattr(state, name)
            if value is not None:  # a stand-in is stored as it was read: still packed
                fields[name] = value.raw if isinstance(value, StoredValue) \
                    else compress(adapter.dump_json(value).decode("utf-8"))
        pipe.hset(parts_key, mapping=fields)

    def update(self, run_id: str, change: StateChange, lean: bool = False) -> PhaseState:
        """WATCH the run's key, read, change, save in MULTI/EXEC; another save in between (a peer phase, a
        cancel) makes EXEC fail, and the change is made again on what that save stored.  ``lean``: the
        stored state as ``load_lean`` reads it; what ``change`` keeps of it is saved from its stand-ins
        (a phase merging its writes reads a 100k-task run's tasks once, not twice)."""
        from redis.exceptions import WatchError

        for _ in range(UPDATE_ATTEMPTS):
            with self.client.pipeline() as pipe:
                try:
                    pipe.watch(self.key(run_id))
                    state = change(self.load_lean(run_id) if lean else self.load(run_id))
                    pipe.multi()
                    self.save(state, pipe)
                    return state
                except WatchError:
                    continue
        raise StateFileError(f"run {run_id}: could not save the state: it kept changing under "
                             f"{UPDATE_ATTEMPTS} attempts")

    def load(self, run_id: str) -> Optional[PhaseState]:
        state = self.load_lean(run_id)
        if state is None:
            return None
        if isinstance(state.task_results, StoredList):
            state.task_results = list(state.task_results)
        if isinstance(state.tasks_data, StoredTasks):  # the parts kept apart, back in the state
            state.tasks_data = list(state.tasks_data)
            for name in ("plan", "task_contexts"):
                value = getattr(state, name)
                if isinstance(value, StoredValue):
                    setattr(state, name, value.value())
            check_state(state, f"run {run_id}")
        return state

    def load_lean(self, run_id: str) -> Optional[PhaseState]:
        """The state as stored; what is kept apart stays there behind stand-ins (``store.parts``): task
        results behind a ``StoredResults``, a very large run's tasks behind a ``StoredTasks``, its plan and
        task contexts packed in a ``StoredValue`` each.  For a reader: what it does not read is never built."""
        pipe = self.client.pipeline(transaction=True)  # the state and its parts from one moment
        pipe.get(self.key(run_id))
        pipe.hmget(self.results_key(run_id), ["count", "chunks"])
        pipe.hmget(self.parts_key(run_id), ["tasks", "tasks_chunks", "plan", "task_contexts"])
        raw, (count, chunks), (tasks, tasks_chunks, plan, contexts) = pipe.execute()
        if raw is None:
            return None
        source = f"run {run_id}"
        state = parse_state(unpack_state(raw, source), source)
        if chunks is not None and not state.task_results:  # apart (a state written before: inline)
            state.task_results = StoredResults(self.client, self.results_key(run_id), int(count), int(chunks),
                                               source)
        if tasks_chunks is not None and not state.tasks_data:
            state.tasks_data = StoredTasks(self.client, self.parts_key(run_id), int(tasks), int(tasks_chunks),
                                           source, field="tasks:")
            state.plan = StoredValue(plan, PLAN, "plan", source) if plan is not None else None
            state.task_contexts = StoredValue(contexts, CONTEXTS, "task contexts", source) \
                if contexts is not None else {}
        return state

    def list_runs(self, limit: int = 20) -> list[PhaseState]:
        ids = self.client.zrevrange(self.index_key, 0, limit * 2)
        runs = []
        for raw_id in ids:
            run_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            state = self.load(run_id)
            if state is None:  # expired by TTL: drop it from the index too
                self.client.zrem(self.index_key, run_id)
                continue
            runs.append(state)
            if len(runs) >= limit:
                break
        return runs
