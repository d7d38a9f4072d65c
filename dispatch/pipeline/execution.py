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
from typing import Collection, Optional

from dispatch.agents import AGENTS, task_timeout
from dispatch.config import ComponentConfig
from dispatch.workspace import for_task
from dispatch.models import (AgentPayload, ExecutionPhase, Integration, PhaseResult, PhaseState, TaskResult, TaskSpec,
                             iso, utcnow)
from dispatch.pipeline import status
from dispatch.pipeline.thresholds import check_threshold
from dispatch.pipeline.plan import agent_configs
from dispatch.pipeline.spend import effective_budget, pause_reason, spent_before, started_epoch
from dispatch.common.spend import total

PHASE = ExecutionPhase.PARALLEL_EXECUTION
NOT_RUN = "the run stopped before this task ran"
CANCELLED_RUNNING = "cancelled while running"


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
    order = {tid: i for i, tid in enumerate(state.plan.order)} if state.plan else {}
    git = state.workspace is not None and state.workspace.isolation == "git"
    task_cap = effective_budget(state).per_task_max_cost_usd
    payloads = {}
    for i, task in enumerate(state.tasks_data):
        component = configs[task.agent]
        payload = AgentPayload(
            task=task, agent=component, context=state.task_contexts.get(task.task_id),
            user_prompt=state.user_prompt, workspace_path=state.workspace_path,
            timeout_s=task_timeout(component, state.run_config.timeout_seconds),
            progress_every=every, request_extras=extras,
            dependency_order=sorted(dict.fromkeys(task.dependencies), key=lambda d: order.get(d, 0)),
            prices=state.config.prices, max_cost_usd=task_cap)
        if git and edits_files(component):
            options = for_task(state.config.workspace, task, f"tasks[{i}]")
            if options.isolation != "shared":
                payload.workspace, payload.workspace_options = state.workspace, options
        payloads[task.task_id] = payload
    return payloads


def edits_files(component: ComponentConfig) -> bool:
    """Whether an agent of this configuration may change files (and so gets a checkout of its own)."""
    return AGENTS.get(component.kind).edits_files if component.kind in AGENTS else True


def needs_workspace(state: PhaseState) -> bool:
    """Phase 4 will run a task whose agent may edit files: the run records a workspace at submission."""
    if ExecutionPhase.PARALLEL_EXECUTION.number not in state.selected_phases or state.workspace is not None:
        return False
    configs = dict(state.plan.agent_configs) if state.plan else {}
    missing = [t for t in state.tasks_data if t.agent not in configs]
    if missing:  # planned on a worker later: resolved here the same way (the preflight already checked them)
        configs.update(agent_configs(missing, state.config))
    return any(edits_files(configs[t.agent]) for t in state.tasks_data)


def integration_order(state: PhaseState, finished: dict[str, TaskResult]) -> list[tuple[str, str]]:
    """(task id, change commit) of every succeeded task with a change, in the plan's order (ties: input)."""
    order = state.plan.order if state.plan else [t.task_id for t in state.tasks_data]
    return [(tid, finished[tid].changes.commit) for tid in order
            if tid in finished and finished[tid].success and finished[tid].changes is not None]


def kept_results(state: PhaseState) -> dict[str, TaskResult]:
    """Results kept from an earlier attempt (``dispatch resume``): those tasks are not run again."""
    return {r.task_id: r for r in state.task_results if r.success}


def collect_results(state: PhaseState, finished: dict[str, TaskResult],
                    stopped_reason: str = NOT_RUN, running: Collection[str] = (),
                    paused: Optional[str] = None) -> list[TaskResult]:
    """Every input task exactly once, in input order; unfinished ones are skipped with the reason
    (``running``: tasks that had started when the run was cancelled, and were stopped there)."""
    by_id: dict[str, TaskResult] = {}
    for task in _in_dependency_order(state):
        if task.task_id in finished:
            by_id[task.task_id] = finished[task.task_id]
            if paused and by_id[task.task_id].not_run:  # refused at its start: the same words as the rest
                by_id[task.task_id] = by_id[task.task_id].model_copy(update={"error": f"not run: {paused}"})
            continue
        if task.task_id in running:
            by_id[task.task_id] = TaskResult(task_id=task.task_id, agent=task.agent, success=False, skipped=True,
                                             error=CANCELLED_RUNNING)
            continue
        blockers = [d for d in task.dependencies if not (by_id.get(d) and by_id[d].success)]
        if paused and all(by_id.get(d) is not None and by_id[d].not_run for d in blockers):
            # the run paused at a cap before this task (or a dependency of it) could start: resume runs it
            by_id[task.task_id] = TaskResult(task_id=task.task_id, agent=task.agent, success=False, not_run=True,
                                             error=f"not run: {paused}")
            continue
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
                    lost: Optional[dict[str, str]] = None, integration: Optional[Integration] = None,
                    integration_error: Optional[str] = None, running: Collection[str] = (),
                    paused: Optional[str] = None) -> PhaseResult:
    """Record phase 4's result from the scheduler's records and set the run's status.

    ``started``: the epoch seconds phase 4 started.  ``cancel_seen``: the run
    was cancelled.  ``broken``: why the chord could not deliver the outcome
    (a part's process was killed); ``lost`` names the tasks that took down
    with the reason, reported failed rather than silently skipped.  ``running``: tasks
    that had started and not finished (a cancel stopped them), reported as such.  ``paused``: the
    cap (``max_tokens``...) that stopped new tasks: the run ends ``paused`` and the tasks that did not
    start say so (``not_run``), for ``dispatch resume``.
    """
    finished = dict(finished)
    agents = {t.task_id: t.agent for t in state.tasks_data}
    for task_id, error in (lost or {}).items():
        if task_id in agents and task_id not in finished:
            finished[task_id] = TaskResult(task_id=task_id, agent=agents[task_id], success=False, error=error)
    stopped = cancel_seen or state.status == "cancelled"
    reason = None
    if paused and not stopped:
        spent = total([spent_before(state, {}), *(r.usage for r in finished.values())])
        began = started_epoch(state)
        reason = pause_reason(paused, effective_budget(state), spent, time.time() - began if began else None)
    state.task_results = collect_results(state, finished, running=running if stopped else (), paused=reason)
    result = execution_result(state.task_results, started)
    if reason and not result.output_data.get("not_run"):
        reason = None  # the cap was reached by the last tasks: nothing is left to run, the run is not paused
    if reason:
        result.output_data["pause_reason"] = reason
        result.error = f"paused: {reason} ({result.output_data['not_run']} of {len(state.tasks_data)} tasks not run)"
    why = "cancelled" if stopped else broken
    if why:
        result.success = False
        result.error = f"{why} ({len(finished)} of {len(state.tasks_data)} tasks had finished)"
    state.integration = integration
    if integration is not None:
        result.output_data["integration"] = {"ref": integration.ref, "merged": len(integration.merged),
                                             "conflicts": len(integration.conflicts)}
        if integration.conflicts and result.success:  # no work is lost, but the branch lacks some of it
            result.success = False
            names = ", ".join(f"{c.task_id} ({', '.join(c.files)})" for c in integration.conflicts)
            result.error = f"integration: left out of {integration.ref}: {names}"
    if integration_error:
        result.output_data["integration_error"] = integration_error
    check_threshold(result, state.config)
    state.record(result)
    status.after_execution(state, result, stopped, paused=reason)
    return result


def execution_result(results: list[TaskResult], started: float) -> PhaseResult:
    succeeded = sum(1 for r in results if r.success)
    skipped = sum(1 for r in results if r.skipped)
    not_run = sum(1 for r in results if r.not_run)
    failed = len(results) - succeeded - skipped - not_run
    usage = total(r.usage for r in results)
    workers = sorted({r.worker for r in results if r.worker})
    now = time.time()
    return PhaseResult(
        phase=PHASE, phase_name=PHASE.title, success=failed == 0 and skipped == 0 and not_run == 0,
        duration_ms=round((now - started) * 1000, 1) if started else 0.0,
        started_at=iso(datetime.fromtimestamp(started, tz=timezone.utc)) if started else None,
        completed_at=iso(utcnow()),
        error=None if failed == 0 and skipped == 0 else f"{failed} failed, {skipped} skipped",
        output_data={"total_tasks": len(results), "succeeded": succeeded, "failed": failed,
                     "skipped": skipped, "workers": workers,
                     **({"not_run": not_run} if not_run else {}),
                     **({"usage": usage.model_dump(mode="json")} if usage.calls else {})})
