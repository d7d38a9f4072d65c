"""The MCP tools' engine: runs driven through exactly the code the CLI uses.

``prepare_state`` and ``validate_input`` check a breakdown (a fault is a
``UsageError`` with the CLI's message), ``Runner`` submits and follows, the
store answers ``status`` and ``results``, ``cancel_run`` and ``resume_state``
stop and continue a run.  Nothing here knows about MCP: the server turns what
these methods raise into tool errors.

Embedded mode (no ``DISPATCH_BROKER_URL``) runs the in-process worker for the
duration of ``Runner.run``, so a run submitted without waiting runs to its end
in a background thread of this process; the in-process workers of two
runs would share one memory broker, so embedded runs take turns (one lock).
"""
from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any, Callable, Optional

from pydantic import ValidationError

from dispatch.config import DispatchConfig, Settings, format_validation_error
from dispatch.errors import ConfigError, DispatchError, UsageError
from dispatch.mcp_server.shapes import (CancelReport, PhaseSummary, RunList, RunReply, RunResults,
                                        RunStatusReport, TaskOutcome, ValidationReport, run_uri)
from dispatch.models import ExecutionPhase, PhaseConfig, PhaseState
from dispatch.pipeline import status as run_status
from dispatch.pipeline.inputs import input_json_schema, validate_input
from dispatch.pipeline.output import build_output
from dispatch.pipeline.prepare import Prepared, prepare_state, resume_state
from dispatch.runtime.client import Runner
from dispatch.runtime.control import cancel_run
from dispatch.runtime.telemetry import spend_of, task_status

Progress = Callable[[float, float, str], None]  # (progress, total, message)


class ProgressObserver:
    """``RunObserver`` that turns phases and phase-4 counts into MCP progress (monotonic, 0..phases)."""

    poll_s = 0.5

    def __init__(self, state: PhaseState, report: Progress) -> None:
        self.report = report
        self.phases = state.selected_phases or [0]
        self.index = 0
        self.title = ""
        self.last = -1.0

    def _send(self, value: float, message: str) -> None:
        if value <= self.last:  # MCP progress must increase with every notification
            return
        self.last = value
        try:
            self.report(value, float(len(self.phases)), message)
        except Exception:  # noqa: BLE001 - a client gone away must not stop the run
            pass

    def phase_started(self, phase: ExecutionPhase, state: PhaseState) -> None:
        self.index = self.phases.index(phase.number) if phase.number in self.phases else self.index
        self.title = f"phase {phase.number} {phase.title}"
        self._send(self.index + 0.01, f"{self.title} started")

    def phase_finished(self, phase: ExecutionPhase, state: PhaseState) -> None:
        result = state.result_for(phase)
        how = "done" if result is None or result.success else f"failed: {result.error}"
        self._send(self.index + 1, f"{self.title} {how}")

    def progress(self, done: Optional[int] = None, total: Optional[int] = None) -> None:
        if done is not None and total:
            self._send(self.index + 0.01 + min(done, total) / total * 0.98, f"{self.title}: {done}/{total} tasks")

    def warn(self, text: str) -> None:
        self._send(self.last + 0.001, f"warning: {text}")

    def line(self, text: str) -> None: ...
    def ok(self, text: str) -> None: ...
    def progress_start(self, phase: ExecutionPhase) -> None: ...
    def progress_clear(self) -> None: ...
    def progress_finish(self) -> None: ...


class RunService:
    def __init__(self, settings: Settings, config_file: Optional[str] = None) -> None:
        self.settings = settings
        self.config_file = config_file or settings.config_file
        self.reader = Runner(settings)  # for the store, the deployment and revokes; its app is built once
        self.embedded_turn = threading.Lock()
        self.active: dict[str, Runner] = {}  # runs this process is running now (embedded cancel uses their app)
        self.threads: dict[str, threading.Thread] = {}
        self.errors: dict[str, str] = {}
        self._guard = threading.Lock()

    @property
    def mode(self) -> str:
        return "embedded" if self.settings.embedded else "distributed"

    # ------------------------------------------------------------------ inputs
    def config(self, given: Any) -> DispatchConfig:
        """A config file path (as ``--config``), an inline config object, or None: the server's own."""
        if given is None:
            return DispatchConfig.load(self.config_file)
        if isinstance(given, str):
            return DispatchConfig.load(given)
        if not isinstance(given, dict):
            raise ConfigError(f"config: expected a config file path or a config object, got {type(given).__name__}")
        try:
            config = DispatchConfig.model_validate(given)
        except ValidationError as exc:
            raise ConfigError(f"config: {format_validation_error(exc)}") from None
        config.refuse_inline_secrets("config")
        return config

    def prepare(self, breakdown: Any, cfg: PhaseConfig, config: Any) -> Prepared:
        request = validate_input(breakdown, "breakdown")
        return prepare_state(request, cfg, self.config(config), None)

    # ------------------------------------------------------------------ tools
    def schema(self) -> dict[str, Any]:
        return input_json_schema()

    def validate(self, breakdown: Any, config: Any = None) -> ValidationReport:
        """Phases 1-2 (``--enable-quorum --stop-after-phase 2``): the verdict and the plan, no agents."""
        prepared = self.prepare(breakdown, PhaseConfig(stop_after_phase=2, enable_quorum=True), config)
        error = None
        try:
            final = self.execute(prepared.state, wait=True) or prepared.state
        except UsageError:
            raise
        except DispatchError as exc:
            error, final = str(exc), self.stored_or(prepared.state)
        quorum = final.quorum_result
        failed = [r for r in final.phases_executed if not r.success and not r.skipped]
        error = error or next((r.error for r in failed if r.error), None)
        valid = error is None and final.plan is not None and (quorum is None or quorum.decision != "FAIL")
        return ValidationReport(valid=valid, run_id=final.run_id, status=final.status,
                                decision=quorum.decision if quorum else None,
                                confidence=quorum.confidence if quorum else None,
                                deficiencies=quorum.deficiencies if quorum else [],
                                warnings=prepared.warnings + (quorum.warnings if quorum else []),
                                error=error, quorum=quorum, plan=final.plan)

    def run(self, breakdown: Any, wait: bool = False, config: Any = None,
            progress: Optional[Progress] = None) -> RunReply:
        """Phases 2-4, as ``python cli.py < breakdown.json`` (``--no-wait`` unless ``wait``)."""
        return self.start(self.prepare(breakdown, PhaseConfig(), config), wait, progress)

    def resume(self, run_id: str, wait: bool = False, config: Any = None, force: bool = False,
               progress: Optional[Progress] = None) -> RunReply:
        """``dispatch resume RUN_ID``: the same run id, the phases after its last completed one."""
        stored = self.load(run_id)
        if run_id in self.active:
            raise UsageError(f"run {run_id} is running in this server; cancel it first")
        prepared = resume_state(stored, [], self.config(config) if config is not None else None, force=force)
        self.reader.deployment.clear_cancel(run_id)
        return self.start(prepared, wait, progress)

    def status(self, run_id: str) -> RunStatusReport:
        return self.status_of(self.load(run_id))

    def results(self, run_id: str) -> RunResults:
        return self.results_of(self.load(run_id))

    def cancel(self, run_id: str) -> CancelReport:
        runner = self.active.get(run_id, self.reader)
        app = runner.app
        # the embedded worker is a threads pool, which cannot terminate a running task: revoke only
        terminate = not self.settings.embedded
        outcome = cancel_run(run_id, runner.deployment,
                             lambda ids: app.control.revoke(ids, terminate=terminate, signal="SIGTERM"))
        return CancelReport(run_id=outcome.run_id, previous_status=outcome.previous_status, status=outcome.status,
                            revoked=outcome.revoked, finished_tasks=outcome.finished_tasks)

    def runs(self, limit: int = 20) -> RunList:
        return RunList(runs=[self.status_of(state) for state in self.reader.store.list_runs(limit)])

    # ------------------------------------------------------------------ running
    def start(self, prepared: Prepared, wait: bool, progress: Optional[Progress]) -> RunReply:
        state = prepared.state
        reply = RunReply(run_id=state.run_id, status=state.status, mode=self.mode, phases=state.selected_phases,
                         resource=run_uri(state.run_id), warnings=prepared.warnings, notes=prepared.notes)
        t0 = time.perf_counter()
        if wait:
            observer = ProgressObserver(state, progress) if progress else None
            error = None
            try:
                final = self.execute(state, wait=True, observer=observer) or state
            except UsageError:
                raise
            except DispatchError as exc:  # as the CLI: the run's JSON with the error, not a dead tool
                error, final = str(exc), self.stored_or(state)
            reply.status = final.status
            reply.results = self.results_of(final, (time.perf_counter() - t0) * 1000, error)
            return reply
        if self.settings.embedded:
            self.reader.store.save(state)  # visible to status at once, while it waits for its turn
            thread = threading.Thread(target=self.background, args=(state,), name=f"dispatch-run-{state.run_id}",
                                      daemon=True)
            with self._guard:
                self.threads[state.run_id] = thread
            thread.start()
        else:
            self.execute(state, wait=False)
        reply.status = "pending"
        return reply

    def execute(self, state: PhaseState, wait: bool, observer: Any = None) -> Optional[PhaseState]:
        runner = Runner(self.settings, observer)
        if not self.settings.embedded:
            return runner.run(state, wait=wait)
        with self.embedded_turn:
            self.active[state.run_id] = runner
            try:
                return runner.run(state, wait=True)
            finally:
                self.active.pop(state.run_id, None)

    def background(self, state: PhaseState) -> None:
        try:
            self.execute(state, wait=True)
        except Exception as exc:  # noqa: BLE001 - kept for status; the run's state says the rest
            self.errors[state.run_id] = str(exc) if isinstance(exc, DispatchError) else f"{type(exc).__name__}: {exc}"
        finally:
            with self._guard:
                self.threads.pop(state.run_id, None)

    def wait_background(self, timeout: float = 10.0) -> None:
        """Let embedded runs still running finish (the server is shutting down)."""
        deadline = time.monotonic() + timeout
        for thread in list(self.threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ reading
    def load(self, run_id: str) -> PhaseState:
        store = self.reader.store
        state = store.load(run_id)
        if state is None:
            raise UsageError(f"no run '{run_id}' in {store.describe()} (see 'dispatch runs')")
        return state

    def stored_or(self, state: PhaseState) -> PhaseState:
        try:
            return self.reader.store.load(state.run_id) or state
        except Exception:  # noqa: BLE001 - the store is what failed: the state we had is the answer
            return state

    def finished_so_far(self, state: PhaseState) -> int:
        """Agent tasks with a recorded result: the scheduler's count while phase 4 runs."""
        if state.status in run_status.ACTIVE and state.current_phase >= ExecutionPhase.CONTEXT_FILTERING.number:
            try:
                scheduler = self.reader.deployment.scheduler(state.run_id)
                return int(scheduler.client.hlen(scheduler.key("results")))
            except Exception:  # noqa: BLE001 - a count is a nicety; the status is still right
                return 0
        return sum(1 for r in state.task_results if not r.skipped)

    def status_of(self, state: PhaseState) -> RunStatusReport:
        phases = [PhaseSummary(number=r.phase.number, phase=r.phase, success=r.success, skipped=r.skipped,
                               duration_ms=r.duration_ms, error=r.error) for r in state.phases_executed]
        return RunStatusReport(
            run_id=state.run_id, status=state.status, mode=self.mode, started_at=state.started_at,
            saved_at=state.saved_at, selected_phases=state.selected_phases, phases=phases,
            tasks_total=len(state.tasks_data), tasks_finished=self.finished_so_far(state),
            tasks_succeeded=sum(1 for r in state.task_results if r.success),
            tasks_failed=sum(1 for r in state.task_results if not r.success and not r.skipped),
            error=self.errors.get(state.run_id), resource=run_uri(state.run_id))

    def results_of(self, state: PhaseState, total_ms: Optional[float] = None,
                   error: Optional[str] = None) -> RunResults:
        error = error or self.errors.get(state.run_id)
        output = build_output(state, wall_ms(state) if total_ms is None else total_ms, error=error)
        tasks = [TaskOutcome(task_id=r.task_id, agent=r.agent, status=task_status(r), success=r.success,
                             output=r.output, error=r.error, changes=getattr(r, "changes", None),
                             usage=spend_of(r.usage), duration_ms=r.duration_ms, worker=r.worker,
                             attempts=r.attempts) for r in state.task_results]
        return RunResults(run_id=state.run_id, status=state.status, success=output.success,
                          finished=state.status not in run_status.ACTIVE, error=output.error, tasks=tasks,
                          output=output)


def wall_ms(state: PhaseState) -> float:
    """From the run's start to its last save, for a run read back from the store."""
    try:
        start = datetime.fromisoformat((state.started_at or "").replace("Z", "+00:00"))
        end = datetime.fromisoformat((state.saved_at or "").replace("Z", "+00:00"))
        return max(0.0, (end - start).total_seconds() * 1000)
    except ValueError:
        return sum(r.duration_ms for r in state.phases_executed)
