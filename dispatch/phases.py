"""The five phases as plain functions over a ``PhaseState`` (no Celery here).

Each ``execute_phase_N_*`` mutates the state it is given and returns the
``PhaseResult`` to record; ``run_phase`` adds timing and turns an exception
into a failed result, so the Celery shell in ``dispatch/tasks`` stays thin.
Phase 4's fan-out lives in ``dispatch/scheduler.py``; its bookkeeping
(results in input order, skip reasons) lives here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .config import DispatchConfig
from .errors import DispatchError
from .models import ExecutionPhase, PhaseResult, PhaseState, TaskResult, iso, utcnow
from .planning import plan_tasks

EventSink = Callable[[str], None]


class PhaseFailed(DispatchError):
    """A critical phase failure that aborts the run (quorum FAIL, planning error)."""


@dataclass
class PhaseEnv:
    """What a phase may use besides the state: caches and a place for events."""

    config: DispatchConfig = field(default_factory=DispatchConfig)
    cache_dir: Optional[Path] = None
    quorum_cache: Any = None
    on_event: EventSink = lambda line: None
    sleep: Callable[[float], None] = time.sleep


def run_phase(phase: ExecutionPhase, state: PhaseState, env: PhaseEnv,
              body: Callable[[PhaseState, PhaseEnv], PhaseResult]) -> PhaseResult:
    """Time ``body`` and record its result; an exception becomes a failed ``PhaseResult``.

    A body that raised is retried up to ``phases.retries`` times with
    exponential backoff; the result's ``retry_count`` says how many it took.
    """
    options = env.config.phases
    started = utcnow()
    t0 = time.perf_counter()
    attempt = 0
    while True:
        try:
            result = body(state, env)
            break
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, never lost
            error = str(exc) if isinstance(exc, DispatchError) else f"{type(exc).__name__}: {exc}"
            if attempt >= options.retries:
                result = PhaseResult(phase=phase, phase_name=phase.title, success=False, error=error)
                break
            env.on_event(f"⚠ Phase {phase.number} attempt {attempt + 1} failed ({error}); retrying")
            env.sleep(options.retry_backoff_s * 2 ** attempt)
            attempt += 1
    result.retry_count = max(result.retry_count, attempt)
    result.duration_ms = round((time.perf_counter() - t0) * 1000, 1)
    result.started_at = iso(started)
    result.completed_at = iso(utcnow())
    check_threshold(result, env.config)
    state.record(result)
    return result


def check_threshold(result: PhaseResult, config: DispatchConfig) -> None:
    """Mark a phase that took longer than its configured threshold (the log warns)."""
    threshold = config.phases.thresholds_ms.get(result.phase.number)
    if threshold is not None and result.duration_ms > threshold:
        result.output_data["threshold_exceeded_ms"] = threshold


def _result(phase: ExecutionPhase, success: bool = True, **kwargs: Any) -> PhaseResult:
    return PhaseResult(phase=phase, phase_name=phase.title, success=success, **kwargs)


def execute_phase_0_context_gathering(state: PhaseState, env: PhaseEnv) -> PhaseResult:
    from .context import gather_context, summarize_context

    context = gather_context(state.request(), env.config, cache_dir=env.cache_dir)
    state.global_context = context
    return _result(ExecutionPhase.CONTEXT_GATHERING, output_data={
        "context_summary": summarize_context(context), "total_items": len(context.items),
        "total_tokens": context.total_tokens})


def execute_phase_1_quorum_validation(state: PhaseState, env: PhaseEnv) -> PhaseResult:
    from .agents import AGENTS
    from .quorum import run_quorum

    known_agents = set(env.config.agents) | set(AGENTS.kinds())
    outcome = run_quorum(state.request(), env.config, cache=env.quorum_cache,
                         on_event=env.on_event, sleep=env.sleep, known_agents=known_agents)
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
                                  "warnings": quorum.warnings})
    if quorum.decision == "FAIL":
        result.error = "quorum decision FAIL: " + ("; ".join(quorum.deficiencies) or "no deficiencies given")
    return result


def execute_phase_2_task_planning(state: PhaseState, env: PhaseEnv) -> PhaseResult:
    from .agents import resolve_agent

    plan = plan_tasks(state.tasks_data, lambda name: resolve_agent(name, env.config).kind)
    state.plan = plan
    return _result(ExecutionPhase.TASK_PLANNING, output_data={
        "tasks": len(state.tasks_data), "levels": len(plan.levels), "critical_path": plan.critical_path,
        "critical_path_length": plan.critical_path_length,
        "max_parallelism": max((len(level) for level in plan.levels), default=0), "agents": plan.agents})


def execute_phase_3_context_filtering(state: PhaseState, env: PhaseEnv) -> PhaseResult:
    from .context import filter_contexts

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


def is_critical_failure(result: PhaseResult) -> bool:
    """Phase 0 failing is non-critical (the guide); any other failed phase stops the run."""
    return not result.success and not result.skipped and result.phase != ExecutionPhase.CONTEXT_GATHERING


# --------------------------------------------------------------- phase 4 bookkeeping
def collect_results(state: PhaseState, finished: dict[str, TaskResult]) -> list[TaskResult]:
    """Every input task exactly once, in input order; unfinished ones are skipped with the reason."""
    results: list[TaskResult] = []
    by_id: dict[str, TaskResult] = {}
    for task in _in_dependency_order(state):
        if task.task_id in finished:
            by_id[task.task_id] = finished[task.task_id]
            continue
        blockers = [d for d in task.dependencies if not (by_id.get(d) and by_id[d].success)]
        reasons = []
        for dep in blockers:
            dep_result = by_id.get(dep)
            reasons.append(f"dependency '{dep}' was skipped" if dep_result and dep_result.skipped
                           else f"dependency '{dep}' failed")
        by_id[task.task_id] = TaskResult(
            task_id=task.task_id, agent=task.agent, success=False, skipped=True,
            error="skipped: " + ("; ".join(reasons) if reasons else "the run stopped before this task ran"))
    results = [by_id[t.task_id] for t in state.tasks_data]
    return results


def _in_dependency_order(state: PhaseState):
    by_id = {t.task_id: t for t in state.tasks_data}
    order = state.plan.order if state.plan else [t.task_id for t in state.tasks_data]
    return [by_id[tid] for tid in order if tid in by_id]


def execution_result(state: PhaseState, results: list[TaskResult], started: float) -> PhaseResult:
    succeeded = sum(1 for r in results if r.success)
    skipped = sum(1 for r in results if r.skipped)
    failed = len(results) - succeeded - skipped
    workers = sorted({r.worker for r in results if r.worker})
    return _result(ExecutionPhase.PARALLEL_EXECUTION, success=failed == 0 and skipped == 0,
                   duration_ms=round((time.time() - started) * 1000, 1),
                   error=None if failed == 0 and skipped == 0 else f"{failed} failed, {skipped} skipped",
                   output_data={"total_tasks": len(results), "succeeded": succeeded, "failed": failed,
                                "skipped": skipped, "workers": workers})
