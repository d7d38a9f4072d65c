"""Phases 0-3 as plain functions over a ``PhaseState`` (no Celery here).

Each ``execute_phase_N_*`` mutates the state it is given and returns the
``PhaseResult`` to record; ``run_phase`` adds timing, retries and turns an
exception into a failed result; ``execute_phase`` also applies what the
result means for the run (its status, phase 0 turning context off), so the
Celery shell in ``dispatch/tasks`` is a few lines.  Phase 4 is
``dispatch/pipeline/execution.py``.
"""
from __future__ import annotations

import contextvars
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from dispatch.agents import known_agent_names
from dispatch.common.backoff import backoff_delay
from dispatch.config import DispatchConfig
from dispatch.context import filter_contexts, gather_context, summarize_context
from dispatch.errors import DispatchError
from dispatch.models import ExecutionPhase, PhaseResult, PhaseState, iso, utcnow
from dispatch.pipeline import status
from dispatch.pipeline.plan import plan_run
from dispatch.pipeline.spend import quorum_cap
from dispatch.pipeline.thresholds import check_threshold
from dispatch.quorum import history_size, run_quorum, wants_history

EventSink = Callable[[str], None]
PHASE_RETRY_CAP_S = 30.0


@dataclass
class PhaseEnv:
    """What a phase may use besides the state: its config, caches and a place for events."""

    config: DispatchConfig = field(default_factory=DispatchConfig)
    cache_dir: Optional[Path] = None
    quorum_cache: Any = None
    on_event: EventSink = lambda line: None
    # recent saved runs, newest first (the store's ``list_runs``): the record learned quorum weights read
    run_history: Optional[Callable[[int], list[PhaseState]]] = None
    sleep: Callable[[float], None] = time.sleep


def run_phase(phase: ExecutionPhase, state: PhaseState, env: PhaseEnv,
              body: Callable[[PhaseState, PhaseEnv], PhaseResult]) -> PhaseResult:
    """Time ``body`` and record its result; an exception becomes a failed ``PhaseResult``.

    A body that raised is retried up to ``phases.retries`` times with
    exponential backoff; the result's ``retry_count`` says how many it took.
    All attempts together get ``phases.timeouts_s`` (phases 0-3): past it the
    phase fails with "timed out", even when its body is blocked where no
    exception reaches it (``call_with_deadline``).
    """
    options = env.config.phases
    timeout = options.timeout_for(phase.number)
    deadline = None if timeout is None else time.monotonic() + timeout
    started = utcnow()
    t0 = time.perf_counter()
    attempt = 0
    while True:
        try:
            result = body(state, env) if deadline is None else call_with_deadline(body, state, env, deadline)
            break
        except PhaseTimedOut:
            result = PhaseResult(phase=phase, phase_name=phase.title, success=False,
                                 error=f"timed out: phase {phase.number} ran past its timeout ({timeout:g}s, "
                                       f"[phases] timeouts_s) and was abandoned")
            break
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, never lost
            error = str(exc) if isinstance(exc, DispatchError) else f"{type(exc).__name__}: {exc}"
            if attempt >= options.retries:
                result = PhaseResult(phase=phase, phase_name=phase.title, success=False, error=error)
                break
            env.on_event(f"⚠ Phase {phase.number} attempt {attempt + 1} failed ({error}); retrying")
            delay = backoff_delay(attempt, options.retry_backoff_s, PHASE_RETRY_CAP_S)
            env.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))
            attempt += 1
    result.retry_count = max(result.retry_count, attempt)
    result.duration_ms = round((time.perf_counter() - t0) * 1000, 1)
    result.started_at = iso(started)
    result.completed_at = iso(utcnow())
    check_threshold(result, env.config)
    state.record(result)
    return result


class PhaseTimedOut(Exception):
    """A phase body still running at its deadline."""


ABANDONED: list[threading.Thread] = []  # bodies given up at their deadline, in this process


def abandoned_bodies() -> int:
    """Phase bodies of this process given up at their deadline and still blocked.  A thread pool inside
    one (the quorum's) would make Python wait for it at exit: the CLI then exits without waiting."""
    return sum(1 for thread in ABANDONED if thread.is_alive())


def call_with_deadline(body: Callable[[PhaseState, PhaseEnv], PhaseResult], state: PhaseState, env: PhaseEnv,
                       deadline: float) -> PhaseResult:
    """``body(state, env)``, given up at ``deadline`` (``time.monotonic()``) with ``PhaseTimedOut``.

    Why a thread and not Celery's time limits or a signal: the body may be
    blocked in a syscall (a read that never returns), which only killing its
    process ends, and phases run in threads pools and embedded in the CLI,
    where neither Celery's limits nor SIGALRM reach them.  The body runs on a
    shallow copy of the state (every phase body assigns whole fields), so one
    abandoned past its deadline may go on but never writes into the run's
    state; its fields are taken back only when it returns in time.
    """
    work = state.model_copy()
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()  # the caller's tracing span and logging context

    def target() -> None:
        try:
            outcome["result"] = context.run(body, work, env)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread as is
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"dispatch-phase-{state.run_id}", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        ABANDONED.append(thread)
        raise PhaseTimedOut()
    if "error" in outcome:
        raise outcome["error"]
    for name in type(state).model_fields:
        value = getattr(work, name)
        if value is not getattr(state, name):
            setattr(state, name, value)
    return outcome["result"]


def _result(phase: ExecutionPhase, success: bool = True, **kwargs: Any) -> PhaseResult:
    return PhaseResult(phase=phase, phase_name=phase.title, success=success, **kwargs)


def execute_phase_0_context_gathering(state: PhaseState, env: PhaseEnv) -> PhaseResult:
    context = gather_context(state.request(), env.config, cache_dir=env.cache_dir)
    state.global_context = context
    return _result(ExecutionPhase.CONTEXT_GATHERING, output_data={
        "context_summary": summarize_context(context), "total_items": len(context.items),
        "total_tokens": context.total_tokens})


def execute_phase_1_quorum_validation(state: PhaseState, env: PhaseEnv) -> PhaseResult:
    known_agents = known_agent_names(env.config)
    history = None
    if env.run_history is not None and wants_history(env.config):
        history = [s for s in env.run_history(history_size(env.config)) if s.run_id != state.run_id]
    outcome = run_quorum(state.request(), env.config, cache=env.quorum_cache, on_event=env.on_event,
                         sleep=env.sleep, known_agents=known_agents, history=history, cap=quorum_cap(state))
    quorum = outcome.result
    state.quorum_result = quorum
    if [t.model_dump() for t in outcome.tasks] != [t.model_dump() for t in state.tasks_data]:
        state.tasks_data = outcome.tasks
        state.plan = None  # a regenerated breakdown must be planned again
    result = _result(ExecutionPhase.QUORUM_VALIDATION, success=quorum.decision != "FAIL",
                     retry_count=quorum.retry_count,
                     output_data={"decision": quorum.decision, "confidence": quorum.confidence,
                                  "deficiencies": quorum.deficiencies,
                                  "quorum_reached": quorum.quorum_reached,
                                  "warnings": quorum.warnings, "calls_saved": quorum.calls_saved,
                                  "weights": quorum.weights})
    if quorum.decision == "FAIL":
        result.error = "quorum decision FAIL: " + ("; ".join(quorum.deficiencies) or "no deficiencies given")
    return result


def execute_phase_2_task_planning(state: PhaseState, env: PhaseEnv) -> PhaseResult:
    plan = plan_run(state.tasks_data, env.config)
    state.plan = plan
    return _result(ExecutionPhase.TASK_PLANNING, output_data={
        "tasks": len(state.tasks_data), "levels": len(plan.levels), "critical_path": plan.critical_path,
        "critical_path_length": plan.critical_path_length,
        "max_parallelism": max((len(level) for level in plan.levels), default=0), "agents": plan.agents})


def execute_phase_3_context_filtering(state: PhaseState, env: PhaseEnv) -> PhaseResult:
    contexts = filter_contexts(state.tasks_data, state.global_context, env.config,
                               workspace_path=state.workspace_path, cache_dir=env.cache_dir)
    state.task_contexts = contexts
    with_context = sum(1 for c in contexts.values() if c.items)
    return _result(ExecutionPhase.CONTEXT_FILTERING, output_data={
        "tasks_prepared": len(contexts), "tasks_with_context": with_context,
        "context_available": state.global_context is not None,
        "total_tokens": sum(c.total_tokens for c in contexts.values())})


PHASE_BODIES: dict[ExecutionPhase, Callable[[PhaseState, PhaseEnv], PhaseResult]] = {
    ExecutionPhase.CONTEXT_GATHERING: execute_phase_0_context_gathering,
    ExecutionPhase.QUORUM_VALIDATION: execute_phase_1_quorum_validation,
    ExecutionPhase.TASK_PLANNING: execute_phase_2_task_planning,
    ExecutionPhase.CONTEXT_FILTERING: execute_phase_3_context_filtering,
}


def execute_phase(phase: ExecutionPhase, state: PhaseState, env: PhaseEnv, cancelled: Callable[[], bool]) -> bool:
    """Run one of phases 0-3 on ``state`` and apply what its result means for the run.

    A stopped run (failed, cancelled) passes through untouched, so a chain
    never needs an exception to stop early.  ``cancelled`` is asked before and
    after the phase: a cancel that came while it ran wins.  Returns whether the phase ran.
    """
    if not status.is_stopped(state) and cancelled():
        status.cancelled(state)
    if status.is_stopped(state):
        return False
    result = run_phase(phase, state, env, PHASE_BODIES[phase])
    if phase == ExecutionPhase.CONTEXT_GATHERING and not result.success:
        state.global_context = None  # the guide: phase 0 failing turns context filtering off
    status.after_phase(state, phase, result, cancelled())
    return True
