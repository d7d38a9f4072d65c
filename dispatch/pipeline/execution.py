"""Phase 4 as pure logic: what each agent task is given, and how the phase closes.

The fan-out itself (the chord that grows as dependencies complete) is Celery's
and lives in ``dispatch/tasks``; the scheduling records live in
``dispatch/store/scheduler.py``.  Here: the typed payload of every agent task
(its agent as phase 2 resolved it, its timeout), the results in input order
with skip reasons, and one closer for every way phase 4 ends (all tasks done,
a cancel, a broken chord), which sets the same fields each time.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Optional

from dispatch.agents import task_timeout
from dispatch.models import AgentPayload, ExecutionPhase, PhaseResult, PhaseState, TaskResult, TaskSpec, iso, utcnow
from dispatch.pipeline import status
from dispatch.pipeline.phases import check_threshold
from dispatch.pipeline.plan import agent_configs

PHASE = ExecutionPhase.PARALLEL_EXECUTION
NOT_RUN = "the run stopped before this task ran"


def task_payloads(state: PhaseState) -> dict[str, AgentPayload]:
    """Everything each agent task needs, resolved once at fan-out time.

    The agents are those phase 2 resolved; a plan from an older state that
    lacks them is resolved now, from the same config.
    """
    configs = dict(state.plan.agent_configs) if state.plan else {}
    missing = [t for t in state.tasks_data if t.agent not in configs]
    if missing:
        configs.update(agent_configs(missing, state.config))
    every = max(1, len(state.tasks_data) // 100)
    extras = {k: v for k, v in state.input_extras.items() if k != "quorum_feedback"}
    payloads = {}
    for task in state.tasks_data:
        component = configs[task.agent]
        payloads[task.task_id] = AgentPayload(
            task=task, agent=component, context=state.task_contexts.get(task.task_id),
            user_prompt=state.user_prompt, workspace_path=state.workspace_path,
            timeout_s=task_timeout(component, state.run_config.timeout_seconds),
            progress_every=every, request_extras=extras)
    return payloads


def kept_results(state: PhaseState) -> dict[str, TaskResult]:
    """Results kept from an earlier attempt (``dispatch resume``): those tasks are not run again."""
    return {r.task_id: r for r in state.task_results if r.success}


def collect_results(state: PhaseState, finished: dict[str, TaskResult],
                    stopped_reason: str = NOT_RUN) -> list[TaskResult]:
    """Every input task exactly once, in input order; unfinished ones are skipped with the reason."""
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
            error="skipped: " + ("; ".join(reasons) if reasons else stopped_reason))
    return [by_id[t.task_id] for t in state.tasks_data]


def _in_dependency_order(state: PhaseState) -> list[TaskSpec]:
    by_id = {t.task_id: t for t in state.tasks_data}
    order = state.plan.order if state.plan else [t.task_id for t in state.tasks_data]
    return [by_id[tid] for tid in order if tid in by_id]


def close_execution(state: PhaseState, finished: dict[str, TaskResult], started: float, *,
                    cancel_seen: bool = False, broken: Optional[str] = None,
                    lost: Optional[dict[str, str]] = None) -> PhaseResult:
    """Record phase 4's result from the scheduler's records and set the run's status.

    ``started``: the epoch seconds phase 4 started.  ``cancel_seen``: the run
    was cancelled.  ``broken``: why the chord could not deliver the outcome
    (a part's process was killed); ``lost`` names the tasks that took down
    with the reason, reported failed rather than silently skipped.
    """
    finished = dict(finished)
    agents = {t.task_id: t.agent for t in state.tasks_data}
    for task_id, error in (lost or {}).items():
        if task_id in agents and task_id not in finished:
            finished[task_id] = TaskResult(task_id=task_id, agent=agents[task_id], success=False, error=error)
    stopped = cancel_seen or state.status == "cancelled"
    state.task_results = collect_results(state, finished)
    result = execution_result(state.task_results, started)
    why = "cancelled" if stopped else broken
    if why:
        result.success = False
        result.error = f"{why} ({len(finished)} of {len(state.tasks_data)} tasks had finished)"
    check_threshold(result, state.config)
    state.record(result)
    status.after_execution(state, result, stopped)
    return result


def execution_result(results: list[TaskResult], started: float) -> PhaseResult:
    succeeded = sum(1 for r in results if r.success)
    skipped = sum(1 for r in results if r.skipped)
    failed = len(results) - succeeded - skipped
    workers = sorted({r.worker for r in results if r.worker})
    now = time.time()
    return PhaseResult(
        phase=PHASE, phase_name=PHASE.title, success=failed == 0 and skipped == 0,
        duration_ms=round((now - started) * 1000, 1) if started else 0.0,
        started_at=iso(datetime.fromtimestamp(started, tz=timezone.utc)) if started else None,
        completed_at=iso(utcnow()),
        error=None if failed == 0 and skipped == 0 else f"{failed} failed, {skipped} skipped",
        output_data={"total_tasks": len(results), "succeeded": succeeded, "failed": failed,
                     "skipped": skipped, "workers": workers})
