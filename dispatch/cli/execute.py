"""The one path every run command ends on: run or follow, print the JSON result, pick the exit code.

``dispatch run``, ``resume`` and ``wait`` differ only in how they get a state
(prepared from input, continued from the store, attached to a run started
elsewhere); from there the log, the JSON on stdout, ``--save-phase-state``,
the trace of ``config.trace_dir`` and the exit code are the same code, so a
run followed with ``wait`` reads exactly like one run in the foreground.
"""
from __future__ import annotations

import shlex
import sys
import time
from typing import Any, Optional

from dispatch.cli.io import emit, emit_output
from dispatch.cli.log import Log
from dispatch.common.spend import describe
from dispatch.config import Settings
from dispatch.errors import DispatchError, RunInterrupted, UsageError


def invoked_as() -> str:
    """``python cli.py`` or ``dispatch``: how to show a command the user can type again."""
    argv0 = sys.argv[0] if sys.argv else ""
    return f"python {shlex.quote(argv0)}" if argv0.endswith(".py") else "dispatch"


def make_runner(settings: Settings, log: Log, results: Any = None):
    """The runner every run command uses, reporting to ``log``; ``-q`` silences the embedded worker too.
    With ``results`` (a ``ResultsFile``), each finished task is written there at the poll after it lands."""
    from dispatch.cli.follow import LogObserver
    from dispatch.runtime.client import Runner

    if log.quiet and settings.embedded:
        from dispatch.runtime.embedded import silence_worker_logs

        silence_worker_logs()
    observer: Any = LogObserver(log, settings)
    if results is not None:
        from dispatch.cli.results_file import ResultsFollower

        observer = ResultsFollower(observer, results, lambda run_id: runner.deployment.scheduler(run_id))
    runner = Runner(settings, observer)
    return runner


def report_prepared(prepared: Any, log: Log) -> None:
    for warning in prepared.warnings:
        log.warn(warning)
    for note in prepared.notes:
        log.line(note)


def stored_or(runner: Any, state: Any) -> Any:
    """The run's stored state, or ``state`` when the store cannot be reached (Redis down)."""
    from dispatch.runtime.connection import connection_errors

    try:
        return runner.store.load_lean(state.run_id) or state  # only read from here (output, state file)
    except connection_errors():
        return state


def execute(runner: Any, state: Any, log: Log, t0: float, wait: bool = True, save_to: Optional[str] = None,
            follow: Optional[list] = None, results: Any = None) -> int:
    """Run (or submit) a prepared state, or follow one already submitted (``follow``: its phase results);
    print the JSON result; the exit code says how it went.  ``results``: the ``--results-file``, completed
    from the run's final state and closed whatever happens."""
    ended: list[Any] = []  # the state the run ended with, once known
    # everything below only reads the final state: a large run's results may stay in the store and be
    # streamed from there (output, --results-file, summary), never all held as objects at once
    runner.lean_results = True
    try:
        return _execute(runner, state, log, t0, wait, save_to, follow, ended)
    finally:
        if results is not None:
            results.finish(ended[-1] if ended else None)


def _execute(runner: Any, state: Any, log: Log, t0: float, wait: bool, save_to: Optional[str],
             follow: Optional[list], ended: list[Any]) -> int:
    from dispatch.cli.trace import write_trace
    from dispatch.pipeline.output import build_output
    from dispatch.store.state import save_state_file

    try:
        final = runner.follow(state, follow) if follow is not None else runner.run(state, wait=wait)
    except RunInterrupted as exc:  # embedded: the run stopped here, its state is saved and marked cancelled
        saved = exc.state
        ended.append(saved)
        log.warn(str(exc))
        if save_to:
            save_state_file(saved, save_to)
            log.ok(f"Phase state saved to {save_to}")
        write_trace(saved, log)
        emit_output(build_output(saved, elapsed_ms(t0, saved, follow), save_to, error=str(exc)))
        log.line(f"Resume it with: {invoked_as()} resume {saved.run_id}")
        return exc.exit_code
    except UsageError:
        raise  # refused before anything ran (a workspace that cannot be used as asked): exit 2
    except KeyboardInterrupt:
        log.warn(f"interrupted; run {state.run_id} may still be running on the workers "
                 f"(follow it again with: {invoked_as()} wait {state.run_id})")
        return 130
    except DispatchError as exc:
        log.fail(str(exc))
        saved = stored_or(runner, state)
        ended.append(saved)
        if save_to:
            save_state_file(saved, save_to)
        write_trace(saved, log)
        emit_output(build_output(saved, elapsed_ms(t0, saved, follow), save_to, error=str(exc)))
        return 1
    if final is None:
        emit({"run_id": state.run_id, "status": "submitted", "phases": state.selected_phases})
        log.line(f"Run {state.run_id} submitted; follow it with: {invoked_as()} wait {state.run_id}")
        return 0
    ended.append(final)
    if save_to:
        save_state_file(final, save_to)
        log.ok(f"Phase state saved to {save_to}")
    write_trace(final, log)
    output = build_output(final, elapsed_ms(t0, final, follow), save_to)
    emit_output(output)
    if final.status == "paused" and final.pause_reason:  # a budget cap: say what stopped it and how to go on
        return report_paused(final, output, log)
    spent = describe(output.usage.total) if output.usage else ""
    if spent:
        log.line(f"Spent: {spent}")
    if not output.success:
        log.fail(f"Run {final.run_id} {final.status}" + (f": {output.error}" if output.error else ""))
    return 0 if output.success else 1


def report_paused(final: Any, output: Any, log: Log) -> int:
    """A run paused at a budget cap: exit 1, the cap, the spend so far, and the exact command to continue."""
    from dispatch.pipeline.spend import resume_hint

    spent = describe(output.usage.total) if output.usage else "nothing"
    waiting = sum(1 for r in final.task_results if r.not_run)
    log.warn(f"Run {final.run_id} paused: {final.pause_reason}; spent {spent}; {waiting} task(s) not run")
    log.line(f"Continue it with: {invoked_as()} {resume_hint(final)}")
    return 1


def elapsed_ms(t0: float, state: Any, followed: Optional[list]) -> float:
    """A foreground run: this command's wall time.  A followed run (``wait``): the run's own, from its
    start to its last recorded end, so it means the same whenever the follower came along."""
    if followed is not None:
        from dispatch.report.common import run_wall_ms

        wall = run_wall_ms(state)
        if wall is not None:
            return wall
    return (time.perf_counter() - t0) * 1000
