"""The client side of a run: prepare the state, submit the chain, follow it, report.

Both modes go through ``Runner.run``: embedded wraps the wait in an in-process
worker; distributed only submits and waits on the result backend.
"""
from __future__ import annotations

import time
import uuid
from contextlib import nullcontext
from typing import Any, Optional

from .config import DispatchConfig, Settings, redact_url
from .errors import DispatchError, InputError
from .logs import Log, execution_lines, phase_body, phase_header
from .models import (ExecutionPhase, DispatchInput, DispatchOutput, PhaseConfig, PhaseResult, PhaseState,
                     PhaseTiming, TimingSummary, iso, utcnow)
from .planning import GraphError, plan_tasks
from .selection import check_inputs_available, selected_phases, skip_reason


def new_run_id() -> str:
    return utcnow().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


def prepare_state(request: Optional[DispatchInput], cfg: PhaseConfig, config: DispatchConfig,
                  loaded: Optional[PhaseState], log: Log, run_id: Optional[str] = None) -> PhaseState:
    """The state a run starts from: the input, plus whatever a loaded state already holds."""
    phases = selected_phases(cfg)
    check_inputs_available(cfg, phases, loaded)
    if request is None and loaded is None:
        raise InputError("no input: pipe a task breakdown on stdin, or give --input-file or --load-phase-state")
    state = loaded.model_copy(deep=True) if loaded else PhaseState(run_id="")
    state.run_id = run_id or new_run_id()
    state.status = "pending"
    state.task_results = []
    if request is not None:
        if loaded is not None and [t.task_id for t in loaded.tasks_data] != [t.task_id for t in request.tasks]:
            if loaded.plan or loaded.task_contexts:
                log.warn("the loaded state was planned for other tasks; its plan and per-task context are dropped")
            state.plan, state.task_contexts = None, {}
            check_inputs_available(cfg, phases, state)
        known = set(DispatchInput.model_fields)
        state.user_prompt = request.user_prompt
        state.workspace_path = request.workspace_path
        state.rag_queries = request.rag_queries
        state.tasks_data = request.tasks
        state.run_config = request.config
        state.input_extras = {k: v for k, v in request.model_dump().items() if k not in known}
    state.phase_config = cfg
    state.selected_phases = phases
    state.settings = config.model_dump(mode="json", exclude_none=True)
    state.started_at = iso(utcnow())
    for number in range(len(ExecutionPhase)):
        phase = ExecutionPhase.of(number)
        reason = skip_reason(cfg, number)
        if reason and not (loaded and loaded.has_completed(phase)):
            state.record(PhaseResult.skipped_result(phase, reason))
    if ExecutionPhase.TASK_PLANNING.number in phases:
        preflight_plan(state, config)
    return state


def preflight_plan(state: PhaseState, config: DispatchConfig) -> None:
    """Refuse unknown agents, bad agent options and graph faults before anything is submitted (exit 2).

    Agents are built once per name to validate their options (placeholders,
    providers, unknown keys); ``python`` agents are only resolved, since their
    callables need import only on the workers.
    """
    from .agents import make_agent, resolve_agent

    checked: dict[str, str] = {}

    def check(name: str) -> str:
        if name not in checked:
            kind = resolve_agent(name, config).kind
            if kind != "python":
                make_agent(name, config)
            checked[name] = kind
        return checked[name]

    try:
        plan_tasks(state.tasks_data, check)
    except GraphError as exc:
        raise InputError(str(exc)) from None


RUN_CHECK_S = 10.0  # while following, how often the client checks that its run still exists


def connection_errors() -> tuple[type[BaseException], ...]:
    """What a lost broker or Redis raises on the client side."""
    import redis
    from kombu.exceptions import OperationalError

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OperationalError, ConnectionError)


class Runner:
    def __init__(self, settings: Settings, log: Log) -> None:
        from .progress import Progress

        self.settings = settings
        self.log = log
        self.progress = Progress(log.stream, quiet=log.quiet, interval_s=settings.progress_interval_s)
        self._app: Any = None

    @property
    def app(self) -> Any:
        if self._app is None:
            from .celery_app import create_app

            self._app = create_app(self.settings)
        return self._app

    @property
    def store(self) -> Any:
        from .runtime import make_store

        return make_store(self.settings, None if self.settings.embedded else self.app.backend.client)

    def submit(self, state: PhaseState) -> list[Any]:
        """Chain exactly the selected phases; return one AsyncResult per phase, in order."""
        from celery import chain
        from celery.utils import uuid

        from .control import RunLedger
        from .tasks import phase_signature

        payload = state.model_dump(mode="json")
        signatures = [phase_signature(self.app, n) for n in state.selected_phases]
        signatures[0] = phase_signature(self.app, state.selected_phases[0], payload, immutable=True)
        # ids chosen up front and recorded before sending, so `dispatch cancel` can revoke queued phases;
        # Flower shows the run id instead of the whole state as the arguments
        ids = {}
        for number, signature in zip(state.selected_phases, signatures):
            task_id = uuid()
            ids[task_id] = f"phase_{number}"
            signature.set(task_id=task_id, argsrepr=f"(<state of run {state.run_id}>,)")
        RunLedger(self.app.backend.client, self.settings.key_prefix, state.run_id,
                  self.settings.state_ttl_s).record(ids)
        last = chain(*signatures).apply_async() if len(signatures) > 1 else signatures[0].apply_async()
        results = []
        node = last
        while node is not None:
            results.append(node)
            node = node.parent
        return results[::-1]

    def run(self, state: PhaseState, wait: bool = True) -> Optional[PhaseState]:
        try:
            self.store.save(state)
        except connection_errors() as exc:
            raise DispatchError(f"cannot reach the state store {redact_url(self.settings.state_url)}: {exc}; "
                                f"nothing was submitted") from None
        if self.settings.embedded:
            from .embedded import embedded_worker

            context: Any = embedded_worker(self.app, self.settings.embedded_concurrency)
        else:
            self.log.line(f"Submitting run {state.run_id} to {redact_url(self.settings.broker_url)}")
            context = nullcontext()
        with context:
            results = self.submit(state)
            if not wait:
                return None
            return self.follow(state, results)

    def follow(self, state: PhaseState, results: list[Any]) -> PhaseState:
        """Wait for each phase in turn and log it as the guide shows."""
        config = DispatchConfig.model_validate(state.settings)
        max_retries = config.quorum.max_retries
        current = state
        if 0 in state.selected_phases and not state.phase_config.enable_context:
            self.log.line("--only-phase 0 enables context gathering for this run")
        for number, result in zip(state.selected_phases, results):
            phase = ExecutionPhase.of(number)
            if current.status in ("failed", "cancelled"):
                break
            self.log.raw("\n".join(phase_header(phase, current, max_retries)))
            if phase == ExecutionPhase.PARALLEL_EXECUTION:
                self.log.line(f"Executing {len(current.tasks_data)} tasks in parallel...")
            current = PhaseState.model_validate(self.wait(result, phase, current))
            phase_result = current.result_for(phase)
            if phase_result is None:
                continue
            if phase == ExecutionPhase.PARALLEL_EXECUTION:
                self.log.lines(execution_lines(phase_result, current))
            else:
                self.log.lines(phase_body(phase_result, current, max_retries))
            self.log.line()
        return current

    def wait(self, result: Any, phase: ExecutionPhase, state: PhaseState) -> dict:
        """The phase's returned state; progress on stderr meanwhile; a lost connection ridden out."""
        self.progress.start(phase)
        try:
            return self._wait(result, phase, state)
        finally:
            self.progress.finish()

    def _wait(self, result: Any, phase: ExecutionPhase, state: PhaseState) -> dict:
        from celery.exceptions import TimeoutError as ResultTimeout

        lost = connection_errors()
        warned = False
        started = checked = time.monotonic()
        lost_since: Optional[float] = None
        while True:
            try:
                if lost_since is not None:  # probe with a plain GET: it fails fast while the server is away
                    result.state
                    self.reconnected(state, time.monotonic() - lost_since)
                    lost_since = None
                    result = self.fresh_result(result)
                try:
                    return result.get(timeout=self.progress.poll_s, propagate=True, disable_sync_subtasks=False)
                except (ResultTimeout, TimeoutError):
                    status, meta = result.state, result.info
                if not self.settings.embedded and time.monotonic() - checked > RUN_CHECK_S:
                    self.check_run_exists(state, "")
                    checked = time.monotonic()
                if status == "PROGRESS" and isinstance(meta, dict):
                    self.progress.update(meta.get("done"), meta.get("total"))
                else:
                    self.progress.update()
                if not warned and status == "PENDING" and time.monotonic() - started > 15 \
                        and not self.settings.embedded:
                    self.progress.clear()
                    self.log.warn(f"phase {phase.number} has not started after 15 s: is a worker consuming "
                                  f"the dispatch.phases queue? (celery -A worker worker)")
                    warned = True
            except DispatchError:
                raise
            except Exception as exc:  # noqa: BLE001 - sorted below
                # the result consumer gives up on a reconnect with a RuntimeError caused by the lost connection
                if isinstance(exc, lost) or isinstance(exc.__cause__, lost):
                    lost_since = self.connection_lost(state, exc.__cause__ or exc, lost_since)
                    continue
                # a phase task crashed on its worker, or the run was cancelled
                stopped = self.stopped_state(state.run_id)
                if stopped is None and phase == ExecutionPhase.PARALLEL_EXECUTION:
                    stopped = self.close_broken_phase_4(state, exc)
                if stopped is not None:
                    return stopped.model_dump(mode="json")
                raise DispatchError(f"phase {phase.number} ({phase.title}) crashed on its worker: "
                                    f"{type(exc).__name__}: {exc}; run {state.run_id}") from None

    def fresh_result(self, result: Any) -> Any:
        """The same result through a new app: Celery's result consumer does not recover once it gave up."""
        if self.settings.embedded:
            return result
        self._app = None
        return self.app.AsyncResult(result.id)

    def connection_lost(self, state: PhaseState, exc: BaseException, since: Optional[float]) -> float:
        """Warn once, retry for ``reconnect_timeout_s``, then give up with the way back."""
        now = time.monotonic()
        where = redact_url(self.settings.result_backend or self.settings.broker_url)
        if since is None:
            self.progress.clear()
            self.log.warn(f"lost the connection to {where} ({type(exc).__name__}); reconnecting for up to "
                          f"{self.settings.reconnect_timeout_s:g}s")
            since = now
        if now - since >= self.settings.reconnect_timeout_s:
            raise DispatchError(f"lost the connection to {where} for {now - since:.0f}s while following run "
                                f"{state.run_id}; the workers keep running it once the server is back. Follow "
                                f"it with 'dispatch show {state.run_id}', continue it with "
                                f"'dispatch resume {state.run_id}' if it stopped") from None
        time.sleep(min(1.0, self.settings.reconnect_timeout_s))
        return since

    def reconnected(self, state: PhaseState, outage_s: float) -> None:
        self.check_run_exists(state, f" after {outage_s:.0f}s")
        self.log.ok(f"reconnected after {outage_s:.0f}s")

    def check_run_exists(self, state: PhaseState, after: str) -> None:
        """A Redis that came back empty (restarted without persistence) has lost the run's queued tasks
        too: say so instead of waiting forever for a result that cannot come."""
        store = self.store
        key = getattr(store, "key", None)
        exists = store.client.exists(key(state.run_id)) if key else store.load(state.run_id) is not None
        if not exists:
            raise DispatchError(f"the state store came back{after} without run {state.run_id}: the Redis server "
                                f"lost its data (restarted without persistence? run it with appendonly yes); "
                                f"start the run again") from None

    def close_broken_phase_4(self, state: PhaseState, exc: Exception) -> Optional[PhaseState]:
        """A chord part whose process was killed (past its hard time limit) breaks the chord: the run's
        outcome is then taken from the scheduler's records, the lost task reported, rather than lost."""
        from .control import RunLedger, close_phase_4, lost_agent_tasks

        try:
            client = self.app.backend.client
            ledger = RunLedger(client, self.settings.key_prefix, state.run_id, self.settings.state_ttl_s)
            closed = close_phase_4(state.run_id, self.settings, client, "failed",
                                   f"phase 4's chord broke: {type(exc).__name__}", lost_agent_tasks(str(exc), ledger))
            if closed is not None:
                self.store.save(closed)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            return None
        if closed is not None:
            self.progress.clear()
            self.log.warn(f"phase 4's chord broke ({type(exc).__name__}: {exc}); its outcome is taken from "
                          f"the scheduler's records")
        return closed

    def stopped_state(self, run_id: str) -> Optional[PhaseState]:
        """The stored state of a cancelled run (its revoked tasks make the results raise)."""
        try:
            stored = self.store.load(run_id)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            return None
        if stored is not None and stored.status == "cancelled":
            self.log.warn(f"run {run_id} was cancelled")
            return stored
        return None


def build_output(state: PhaseState, total_ms: float, state_file: Optional[str] = None,
                 error: Optional[str] = None) -> DispatchOutput:
    # phases reused from a loaded state did not run now: they count as skipped in this run's timing
    timings = [PhaseTiming(phase=r.phase, duration_ms=r.duration_ms, success=r.success, skipped=r.skipped)
               if r.skipped or r.phase.number in state.selected_phases
               else PhaseTiming(phase=r.phase, duration_ms=0.0, success=r.success, skipped=True)
               for r in state.phases_executed]
    context = state.result_for(ExecutionPhase.CONTEXT_GATHERING)
    failed = [r for r in state.phases_executed
              if not r.success and not r.skipped and r.phase != ExecutionPhase.CONTEXT_GATHERING]
    success = state.status == "succeeded" and not failed and error is None
    if error is None and failed:
        error = failed[0].error
    return DispatchOutput(
        success=success, run_id=state.run_id, status=state.status,
        timing_summary=TimingSummary(total_duration_ms=round(total_ms, 1), phases=timings),
        phases_executed=state.phases_executed, results=state.task_results, quorum_result=state.quorum_result,
        context_summary=(context.output_data.get("context_summary") if context and not context.skipped else None),
        error=error, state_file=state_file)
