"""``--results-file FILE``: one JSON line per task, written as tasks finish rather than at the end.

Why a file of its own: a 100k-task run's results arrive over minutes; a
consumer (a dashboard, ``tail -f``, a script) wants each as it lands, and the
final JSON on stdout comes only once the run has closed.  While phase 4 runs,
the follower reads the scheduler's ``finished`` list from a cursor at each
poll, so every result is read from Redis once however long the run (embedded
mode reads the in-process Redis the same way).  When the run ends, the tasks
no line was written for yet (skipped, kept by ``resume``, finished after the
last poll) are written from the final state, so the file always ends with
exactly one line per task.  A large run's final state leaves its results in
the store (``StoredResults``): that last pass reads them a chunk at a time.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Optional, TextIO

from dispatch.errors import UsageError
from dispatch.models import ExecutionPhase, PhaseState


class ResultsFile:
    """The open file and which task ids have a line in it."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.fh: TextIO = open(path, "w", encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--results-file {path}: cannot write ({exc.strerror or exc})") from None
        self.written: set[str] = set()

    def write_raw(self, task_id: str, result_json: str) -> None:
        """A result as the scheduler stored it (a ``TaskResult``'s compact JSON)."""
        if task_id in self.written:
            return
        self.written.add(task_id)
        self.fh.write(result_json + "\n")

    def finish(self, state: Optional[PhaseState]) -> None:
        """The tasks still without a line, from the run's final state; then close the file."""
        if state is not None:
            for result in state.task_results:
                self.write_raw(result.task_id, result.model_dump_json())
        self.fh.close()

    def flush(self) -> None:
        self.fh.flush()


class ResultsFollower:
    """A ``RunObserver`` around another: at each poll of phase 4, the newly finished tasks go to the file."""

    def __init__(self, inner: Any, results: ResultsFile, scheduler_of: Callable[[str], Any]) -> None:
        self.inner = inner
        self.results = results
        self.scheduler_of = scheduler_of  # run id -> its DagScheduler (the deployment's)
        self.scheduler: Any = None
        self.cursor = 0

    @property
    def poll_s(self) -> float:
        return self.inner.poll_s

    def __getattr__(self, name: str) -> Any:  # every other report goes to the wrapped observer as it is
        return getattr(self.inner, name)

    def phase_started(self, phase: ExecutionPhase, state: PhaseState) -> None:
        if phase == ExecutionPhase.PARALLEL_EXECUTION:
            self.scheduler, self.cursor = self.scheduler_of(state.run_id), 0
        self.inner.phase_started(phase, state)

    def progress(self, done: Optional[int] = None, total: Optional[int] = None) -> None:
        self.drain()
        self.inner.progress(done, total)

    def progress_finish(self) -> None:
        self.drain()
        self.scheduler = None
        self.inner.progress_finish()

    def drain(self) -> None:
        if self.scheduler is None:
            return
        try:
            landed = self.scheduler.results_since(self.cursor)
        except Exception:  # noqa: BLE001 - a lost connection is the runner's to report; the final state fills in
            return
        self.cursor += len(landed)
        for task_id, raw in landed:
            self.results.write_raw(task_id, compact(raw))
        if landed:
            self.results.flush()


def compact(raw: str) -> str:
    """One line whatever the writer's formatting (the scheduler stores compact JSON already)."""
    return raw if "\n" not in raw else json.dumps(json.loads(raw), separators=(",", ":"))
