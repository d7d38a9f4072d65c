"""The client side of a run: submit the chain of its selected phases, follow it, ride out outages.

The chain's steps are ``pipeline.phase_graph.stages``: phases that do not wait
for each other (0 and 1) go in one group and run at once; the run is still
followed phase by phase in phase order, so each phase's log block comes whole.

Both modes go through ``Runner.run``: embedded wraps the wait in an in-process
worker; distributed only submits and waits on the result backend.  What a
person sees while it runs is the caller's: the runner reports to a
``RunObserver`` (the CLI's log and progress line), and never prints.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Optional, Protocol

from celery import chain, group
from celery.exceptions import TimeoutError as ResultTimeout
from celery.utils import uuid

from dispatch.config import Settings, redact_url
from dispatch.agents.process import stop_all
from dispatch.errors import DispatchError, RunInterrupted
from dispatch.models import ExecutionPhase, PhaseState, StateRef
from dispatch.pipeline import status
from dispatch.pipeline.execution import needs_workspace
from dispatch.pipeline.phase_graph import stages
from dispatch.pipeline.tasklist import CompactTasks
from dispatch.runtime.app import create_app
from dispatch.runtime.connection import connection_errors
from dispatch.runtime.control import close_broken_chord, close_phase_4
from dispatch.runtime.embedded import embedded_worker
from dispatch.runtime import telemetry
from dispatch.runtime.visibility import run_warning
from dispatch.store import Deployment, StateStore, make_store
from dispatch.store.parts import StoredTasks
from dispatch.store.state import INLINE_TASKS
from dispatch.tasks import phase_signature
from dispatch.workspace import WorkspaceError, fetch_run_refs, snapshot_base
from dispatch.tasks.names import celery_id


def agents_view(state: PhaseState) -> PhaseState:
    """The state with one task per agent name: every question about the run's agents (which may edit
    files) has the same answer, without building a large run's every task (``CompactTasks``)."""
    if not isinstance(state.tasks_data, CompactTasks):
        return state
    return state.model_copy(update={"tasks_data": state.tasks_data.one_per_agent()})


class RunObserver(Protocol):
    """What the runner reports while it follows a run."""

    poll_s: float  # how often to poll the result while waiting (and report progress)

    def line(self, text: str) -> None: ...
    def ok(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def phase_started(self, phase: ExecutionPhase, state: PhaseState) -> None: ...
    def phase_finished(self, phase: ExecutionPhase, state: PhaseState) -> None: ...
    def progress_start(self, phase: ExecutionPhase) -> None: ...
    def progress(self, done: Optional[int] = None, total: Optional[int] = None) -> None: ...
    def progress_clear(self) -> None: ...
    def progress_finish(self) -> None: ...


EMBEDDED_POLL_S = 0.005  # how often an embedded run checks its phase result (a GET on the in-process Redis)
INTERRUPT_SETTLE_S = 3.0  # after stopping agents, how long their tasks get to record what they did


class Stopped(BaseException):
    """SIGTERM in the main thread, raised like SIGINT's ``KeyboardInterrupt``."""


class StopSignals:
    """SIGINT/SIGTERM during an embedded run: the first raises in the main thread, later ones are counted."""

    def __init__(self) -> None:
        self.signum = 0
        self.count = 0

    def handle(self, signum: int, _frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            self.signum = signum
            raise KeyboardInterrupt if signum == signal.SIGINT else Stopped()


@contextmanager
def stop_signals() -> Iterator[StopSignals]:
    stopped = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield stopped  # signals are the main thread's: nothing to install
        return
    previous = {sig: signal.signal(sig, stopped.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopped
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class SilentObserver:
    """Reports nowhere (tests, benchmarks, a caller that only wants the state)."""

    poll_s = 0.5

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


RUN_CHECK_S = 10.0  # while following, how often the client checks that its run still exists


class Runner:
    def __init__(self, settings: Settings, observer: Optional[RunObserver] = None) -> None:
        self.settings = settings
        self.observer: RunObserver = observer or SilentObserver()
        self._app: Any = None
        # the states ``follow`` returns may keep a large run's task results, tasks, plan and task contexts in
        # the store (``store.parts``' stand-ins): for a caller that only reads them (the CLI's output, its
        # state file), never one that changes the state; a submitted very large run is ``lighten``ed too
        self.lean_results = False

    @property
    def app(self) -> Any:
        if self._app is None:
            self._app = create_app(self.settings)
        return self._app

    @property
    def store(self) -> StateStore:
        return make_store(self.settings, None if self.settings.embedded else self.app.backend.client)

    @property
    def deployment(self) -> Deployment:
        return Deployment(self.settings, self.app.backend.client)

    def submit(self, state: PhaseState) -> list[Any]:
        """Chain exactly the selected phases, a group for each step of several; return one AsyncResult
        per phase, in phase order."""
        ref = state.ref().model_dump()  # the state itself is in the store (saved by ``run``)
        warning = run_warning(self.settings, state)
        if warning:
            self.observer.warn(warning)
        # ids chosen up front and recorded before sending, so `dispatch cancel` can revoke queued phases
        ids: dict[str, int] = {}
        steps = []
        for index, step in enumerate(stages(state.selected_phases, state.config)):
            signatures = []
            for number in step:  # the first step gets the ref; the others what the step before returned
                signature = phase_signature(self.app, number, ref, immutable=True) if index == 0 \
                    else phase_signature(self.app, number)
                task_id = celery_id(state.run_id, f"phase{number}-{uuid()}")
                ids[task_id] = number
                signatures.append(signature.set(task_id=task_id))
            steps.append(signatures[0] if len(signatures) == 1 else group(signatures))
        self.deployment.ledger(state.run_id).record({task_id: f"phase_{n}" for task_id, n in ids.items()})
        (chain(*steps) if len(steps) > 1 else steps[0]).apply_async()
        by_phase = {number: task_id for task_id, number in ids.items()}
        return [self.app.AsyncResult(by_phase[n]) for n in state.selected_phases]

    def run(self, state: PhaseState, wait: bool = True) -> Optional[PhaseState]:
        if needs_workspace(agents_view(state)):  # the base every task's checkout starts from, recorded first
            state.workspace = snapshot_base(state.workspace_path, state.config.workspace, state.run_id,
                                            distributed=not self.settings.embedded)
        try:
            self.store.save(state)
        except connection_errors() as exc:
            raise DispatchError(f"cannot reach the state store {redact_url(self.settings.state_url)}: {exc}; "
                                f"nothing was submitted") from None
        if self.settings.embedded:
            context: Any = embedded_worker(self.app, self.settings.embedded_concurrency)
            return self.run_embedded(state, context)
        else:
            self.observer.line(f"Submitting run {state.run_id} to {redact_url(self.settings.broker_url)}")
            context = nullcontext()
        with context, telemetry.run_span(state) as span:
            results = self.submit(state)
            if not wait:
                return None
            self.lighten(state)
            final = self.follow(state, results)
            span.finish(final)
            self.fetch_changes(final)
            return final

    def lighten(self, state: PhaseState) -> None:
        """A submitted very large run, followed by a reader (``lean_results``): its tasks, plan and task
        contexts swapped for the store's stand-ins, so the client does not hold them while it waits."""
        if not self.lean_results or len(state.tasks_data) <= INLINE_TASKS:
            return
        stored = self.store.load_lean(state.run_id)
        if stored is not None and isinstance(stored.tasks_data, StoredTasks):
            state.tasks_data, state.plan, state.task_contexts = stored.tasks_data, stored.plan, stored.task_contexts

    def fetch_changes(self, state: PhaseState) -> None:
        """With a git remote, the run's task refs and integration branch came back there: fetch them into
        the user's repository (where ``dispatch apply`` and ``diff`` look)."""
        info = state.workspace
        if info is None or info.isolation != "git" or not info.remote or not info.repo:
            return
        try:
            fetch_run_refs(Path(info.repo), info.remote, state.run_id, timeout=state.config.workspace.git_timeout_s)
        except WorkspaceError as exc:
            self.observer.warn(f"could not fetch run {state.run_id}'s branches from {info.remote}: {exc}")

    def run_embedded(self, state: PhaseState, worker: Any) -> PhaseState:
        """An embedded run: its worker lives in this process, so SIGINT and SIGTERM stop the run here.

        On either signal the run is cancelled (queued tasks do not start), every
        agent process group is stopped within its grace (a second signal:
        at once), phase 4 is closed from the scheduler's records (finished
        results kept) and the state saved; ``RunInterrupted`` carries it.
        """
        with stop_signals() as stopped, worker, telemetry.run_span(state) as span:
            try:
                results = self.submit(state)
                final = self.follow(state, results)
            except (KeyboardInterrupt, Stopped):
                raise self.interrupted(state, stopped.signum or signal.SIGINT, stopped) from None
            span.finish(final)
            return final

    def interrupted(self, state: PhaseState, signum: int, stopped: "StopSignals") -> RunInterrupted:
        run_id = state.run_id
        self.observer.progress_clear()
        self.observer.warn(f"{signal.Signals(signum).name}: stopping run {run_id} (again to stop at once)")
        deployment = self.deployment
        deployment.cancel(run_id)
        stop_all(hurry=lambda: stopped.count > 1)
        scheduler = deployment.scheduler(run_id)
        deadline = time.monotonic() + INTERRUPT_SETTLE_S
        while scheduler.exists() and not scheduler.quiet() and time.monotonic() < deadline \
                and stopped.count <= 1:
            time.sleep(0.02)  # the stopped agents' tasks record their results
        final = close_phase_4(run_id, deployment, cancel_seen=True) or self.store.load(run_id) or state
        status.cancelled(final)
        self.store.save(final)
        return RunInterrupted(f"run {run_id} stopped by {signal.Signals(signum).name}; finished results are "
                              f"saved", final, signum)

    def attach(self, run_id: str) -> Optional[tuple[PhaseState, list[Any]]]:
        """A run submitted elsewhere (``--no-wait``, another machine): the state it was submitted with and
        one result per selected phase, to ``follow`` like a run of this process.  None: no such run.

        The phases' Celery ids come from the run's ledger (recorded before they were sent).
        """
        if self.settings.embedded:
            raise DispatchError("following a run needs a broker (DISPATCH_BROKER_URL): an embedded run lives "
                                "only in the process that started it")
        stored = self.store.load_lean(run_id)  # only followed: a closed large run's results stay in the store
        if stored is None:
            return None
        by_phase = {label: celery_id for celery_id, label in self.deployment.ledger(run_id).tasks().items()
                    if label.startswith("phase_")}
        results = [self.app.AsyncResult(by_phase[f"phase_{n}"]) for n in stored.selected_phases
                   if f"phase_{n}" in by_phase]
        if len(results) != len(stored.selected_phases):
            raise DispatchError(f"run {run_id}: its phase tasks are no longer recorded (the ledger expired "
                                f"after {self.settings.state_ttl_s}s); 'dispatch show {run_id}' has its state")
        return stored, results

    def follow(self, state: PhaseState, results: list[Any]) -> PhaseState:
        """Wait for each phase in turn, telling the observer as each starts and ends.

        Phases of one step ran at once: a peer that stopped the run (phase 1's FAIL) does not hide the
        others' blocks, since they ran as they would have in the sequence; the run stops between steps.
        """
        current = state
        if 0 in state.selected_phases and not state.phase_config.enable_context:
            self.observer.line("--only-phase 0 enables context gathering for this run")
        step_of = {n: i for i, step in enumerate(stages(state.selected_phases, state.config)) for n in step}
        previous = None
        for number, result in zip(state.selected_phases, results):
            phase = ExecutionPhase.of(number)
            if status.is_stopped(current) and (step_of.get(number) != previous or current.status == "cancelled"):
                break
            previous = step_of.get(number)
            self.observer.phase_started(phase, current)
            # waiting needs only the run's id: the last phase's state is let go before the next one is
            # loaded, so a large run's client never holds two of them at once
            waiting = PhaseState(run_id=current.run_id, status=current.status)
            current = None  # type: ignore[assignment]
            with telemetry.phase_span(phase, waiting) as span:
                current = self.wait(result, phase, waiting)
                span.finish(current)
            if current.result_for(phase) is not None:
                self.observer.phase_finished(phase, current)
        return current

    def wait(self, result: Any, phase: ExecutionPhase, state: PhaseState) -> PhaseState:
        """The state the phase left in the store; progress reported meanwhile; a lost connection ridden out."""
        self.observer.progress_start(phase)
        try:
            return self._wait(result, phase, state)
        finally:
            self.observer.progress_finish()

    def state_after(self, returned: Any, state: PhaseState) -> PhaseState:
        """What a phase task returned (a ``StateRef``) -> the state it saved."""
        ref = StateRef.model_validate(returned)
        store = self.store
        stored = store.load_lean(ref.run_id) if self.lean_results else store.load(ref.run_id)
        if stored is None or stored.version < ref.version:
            raise DispatchError(f"run {state.run_id}: phase state version {ref.version} is not in "
                                f"{self.store.describe()} (the store lost data?)")
        return stored

    def _wait(self, result: Any, phase: ExecutionPhase, state: PhaseState) -> PhaseState:
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
                    return self.state_after(self.result_of(result), state)
                except (ResultTimeout, TimeoutError):
                    status, meta = result.state, result.info
                if not self.settings.embedded and time.monotonic() - checked > RUN_CHECK_S:
                    self.check_run_exists(state, "")
                    checked = time.monotonic()
                if status == "PROGRESS" and isinstance(meta, dict):
                    if meta.get("tokens") is not None and hasattr(self.observer, "spend"):  # phase 4 with spend
                        self.observer.spend(meta.get("cost_usd"), meta.get("tokens"))
                    self.observer.progress(meta.get("done"), meta.get("total"))
                else:
                    self.observer.progress()
                if not warned and status == "PENDING" and time.monotonic() - started > 15 \
                        and not self.settings.embedded:
                    self.observer.progress_clear()
                    self.observer.warn(f"phase {phase.number} has not started after 15 s: is a worker consuming "
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
                    return stopped
                raise DispatchError(f"phase {phase.number} ({phase.title}) crashed on its worker: "
                                    f"{type(exc).__name__}: {exc}; run {state.run_id}") from None

    def result_of(self, result: Any) -> Any:
        """What the phase task returned, waiting at most one poll; ``ResultTimeout`` when not yet.

        Embedded, the result is polled rather than waited for on the backend's pub/sub: Celery's result
        consumer there keeps polling a closed connection's fd number, and a pipe that reuses that number
        (every subprocess an agent or git starts) then sees its end of file up to a second late.
        """
        if not self.settings.embedded:
            return result.get(timeout=self.observer.poll_s, propagate=True, disable_sync_subtasks=False)
        deadline = time.monotonic() + self.observer.poll_s
        while not result.ready():
            if time.monotonic() >= deadline:
                raise ResultTimeout(f"phase task {result.id} not ready")
            time.sleep(EMBEDDED_POLL_S)
        if result.successful():
            return result.result
        raise result.result if isinstance(result.result, BaseException) else DispatchError(str(result.result))

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
            self.observer.progress_clear()
            self.observer.warn(f"lost the connection to {where} ({type(exc).__name__}); reconnecting for up to "
                          f"{self.settings.reconnect_timeout_s:g}s")
            since = now
        if now - since >= self.settings.reconnect_timeout_s:
            raise DispatchError(f"lost the connection to {where} for {now - since:.0f}s while following run "
                                f"{state.run_id}; the workers keep running it once the server is back. Follow "
                                f"it with 'dispatch wait {state.run_id}', continue it with "
                                f"'dispatch resume {state.run_id}' if it stopped") from None
        time.sleep(min(1.0, self.settings.reconnect_timeout_s))
        return since

    def reconnected(self, state: PhaseState, outage_s: float) -> None:
        self.check_run_exists(state, f" after {outage_s:.0f}s")
        self.observer.ok(f"reconnected after {outage_s:.0f}s")

    def check_run_exists(self, state: PhaseState, after: str) -> None:
        """A Redis that came back empty (restarted without persistence) has lost the run's queued tasks
        too: say so instead of waiting forever for a result that cannot come."""
        if not self.store.exists(state.run_id):
            raise DispatchError(f"the state store came back{after} without run {state.run_id}: the Redis server "
                                f"lost its data (restarted without persistence? run it with appendonly yes); "
                                f"start the run again") from None

    def close_broken_phase_4(self, state: PhaseState, exc: Exception) -> Optional[PhaseState]:
        """Phase 4's chord broke: its outcome from the scheduler's records (``runtime.control``)."""
        try:
            closed = close_broken_chord(state.run_id, self.deployment, exc)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            return None
        if closed is not None:
            self.observer.progress_clear()
            self.observer.warn(f"phase 4's chord broke ({type(exc).__name__}: {exc}); its outcome is taken from "
                               f"the scheduler's records")
        return closed

    def stopped_state(self, run_id: str) -> Optional[PhaseState]:
        """The stored state of a cancelled run (its revoked tasks make the results raise)."""
        try:
            stored = self.store.load_lean(run_id) if self.lean_results else self.store.load(run_id)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            return None
        if stored is not None and stored.status == "cancelled":
            self.observer.warn(f"run {run_id} was cancelled")
            return stored
        return None
