"""Phase 4 as pure logic: what each agent task is given, and how the phase closes.

The fan-out itself (the chord that grows as dependencies complete) is Celery's
and lives in ``dispatch/tasks``; the scheduling records live in
``dispatch/store/scheduler.py``.  Here: the typed payload of every agent task
(its agent as phase 2 resolved it, its timeout), the results in input order
with skip reasons, and one closer for every way phase 4 ends (all tasks done,
a cancel, a broken chord), which sets the same fields each time.

The close decides from each finished task's flags alone (``Finished``): the
collect step reads the results themselves only when the state is written, a
chunk at a time, so closing a 100k-task run does not hold 100k results.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable, Collection, Iterator, Optional

from dispatch.agents import AGENTS, task_timeout
from dispatch.config import ComponentConfig
from dispatch.workspace import for_task
from dispatch.models import (AgentPayload, ExecutionPhase, Integration, PhaseResult, PhaseState, TaskResult, TaskSpec,
                             Usage, iso, utcnow)
from dispatch.pipeline import status
from dispatch.pipeline.thresholds import check_threshold
from dispatch.pipeline.plan import agent_configs
from dispatch.pipeline.spend import effective_budget, pause_reason, spent_before, started_epoch
from dispatch.common.spend import total

PHASE = ExecutionPhase.PARALLEL_EXECUTION
NOT_RUN = "the run stopped before this task ran"
CANCELLED_RUNNING = "cancelled while running"


def task_agents(state: PhaseState) -> dict[str, ComponentConfig]:
    """Each agent name of the run -> its configuration: those phase 2 resolved; a plan from an older state
    that lacks some is resolved now, from the same config."""
    configs = dict(state.plan.agent_configs) if state.plan else {}
    missing = {t.agent: t for t in state.tasks_data if t.agent not in configs}  # one task per agent
    if missing:
        configs.update(agent_configs(list(missing.values()), state.config))
    return configs


def task_limits(state: PhaseState, configs: dict[str, ComponentConfig]) -> dict[str, Optional[float]]:
    """Each task's timeout (its Celery time limits), without building its payload."""
    timeout = state.run_config.timeout_seconds
    return {t.task_id: task_timeout(configs[t.agent], timeout) for t in state.tasks_data}


def iter_task_payloads(state: PhaseState,
                       configs: Optional[dict[str, ComponentConfig]] = None) -> Iterator[tuple[str, AgentPayload]]:
    """Everything each agent task needs, resolved once at fan-out time, one task at a time: the scheduler
    writes them a chunk at a time, so a 100k-task start never holds every payload (about 1.4 KB each)."""
    configs = task_agents(state) if configs is None else configs
    every = max(1, len(state.tasks_data) // 100)
    extras = {k: v for k, v in state.input_extras.items() if k != "quorum_feedback"}
    order = {tid: i for i, tid in enumerate(state.plan.order)} if state.plan else {}
    git = state.workspace is not None and state.workspace.isolation == "git"
    task_cap = effective_budget(state).per_task_max_cost_usd
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
        yield task.task_id, payload


def task_payloads(state: PhaseState) -> dict[str, AgentPayload]:
    """Every task's payload at once, by task id (tests, tools; phase 4 streams ``iter_task_payloads``)."""
    return dict(iter_task_payloads(state))


def edits_files(component: ComponentConfig) -> bool:
    """Whether an agent of this configuration may change files (and so gets a checkout of its own)."""
    return AGENTS.get(component.kind).edits_files if component.kind in AGENTS else True


def needs_workspace(state: PhaseState) -> bool:
    """Phase 4 will run a task whose agent may edit files: the run records a workspace at submission."""
    if ExecutionPhase.PARALLEL_EXECUTION.number not in state.selected_phases or state.workspace is not None:
        return False
    # planned on a worker later: resolved here the same way (the preflight already checked them)
    configs = task_agents(state)
    return any(edits_files(configs[agent]) for agent in {t.agent for t in state.tasks_data})


def integration_order(state: PhaseState, finished: dict[str, TaskResult]) -> list[tuple[str, str]]:
    """(task id, change commit) of every succeeded task with a change, in the plan's order (ties: input)."""
    order = state.plan.order if state.plan else [t.task_id for t in state.tasks_data]
    return [(tid, finished[tid].changes.commit) for tid in order
            if tid in finished and finished[tid].success and finished[tid].changes is not None]


def integration_summary(integration: Integration) -> dict[str, Any]:
    """Phase 4's ``output_data["integration"]``: the branch and how many changes it holds, left or dropped."""
    return {"ref": integration.ref, "merged": len(integration.merged), "conflicts": len(integration.conflicts),
            "dropped": len(integration.dropped)}


def left_out_error(integration: Integration) -> Optional[str]:
    """Phase 4's error when the integration branch lacks a succeeded task's change (None: it lacks none);
    the one wording, for the closer and for a branch rebuilt at the checkpoint."""
    names = ", ".join(f"{c.task_id} ({', '.join(c.files) or c.reason})" for c in integration.conflicts)
    return f"{LEFT_OUT}{integration.ref}: {names}" if names else None


LEFT_OUT = "integration: left out of "


def kept_results(state: PhaseState) -> dict[str, TaskResult]:
    """Results kept from an earlier attempt (``dispatch resume``): those tasks are not run again."""
    return {r.task_id: r for r in state.task_results if r.success}


SUCCESS, SKIPPED, NOT_RUN_FLAG = 1, 2, 4  # what the close needs of a finished task, as one small int


def flags_of(result: TaskResult) -> int:
    return (SUCCESS if result.success else 0) | (SKIPPED if result.skipped else 0) \
        | (NOT_RUN_FLAG if result.not_run else 0)


class Finished:
    """Phase 4's finished results as the close reads them: each task's flags, the spend and the workers
    (gathered in one pass), and the results themselves fetched a chunk at a time (``fetch``: task ids ->
    their results).  The close of a 100k-task run so never holds every ``TaskResult`` at once."""

    def __init__(self, flags: dict[str, int], usage: list[Usage], workers: set[str],
                 fetch: Callable[[list[str]], list[TaskResult]]) -> None:
        self.flags, self.usage, self.workers, self.fetch = flags, usage, workers, fetch

    @classmethod
    def of(cls, finished: dict[str, TaskResult]) -> "Finished":
        """Results already in memory (a cancel, a broken chord, the unit tests)."""
        return cls({tid: flags_of(r) for tid, r in finished.items()}, [r.usage for r in finished.values()],
                   {r.worker for r in finished.values() if r.worker},
                   lambda ids: [finished[tid] for tid in ids])

    def __len__(self) -> int:
        return len(self.flags)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.flags


class ClosedResults:
    """The results of every input task in input order, read on demand from ``Finished`` and the results
    the close made up (skipped, cancelled, not run): iterable and sized like the list it stands for."""

    def __init__(self, state: PhaseState, finished: Finished, made: dict[str, TaskResult],
                 paused: Optional[str], chunk: int = 1000) -> None:
        self.ids = [t.task_id for t in state.tasks_data]
        self.finished, self.made, self.paused, self.chunk = finished, made, paused, chunk

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[TaskResult]:
        for start in range(0, len(self.ids), self.chunk):
            ids = self.ids[start:start + self.chunk]
            wanted = [tid for tid in ids if tid not in self.made]
            fetched = dict(zip(wanted, self.finished.fetch(wanted))) if wanted else {}
            for tid in ids:
                result = self.made.get(tid) or fetched[tid]
                if self.paused and tid not in self.made and result.not_run:  # refused at its start: same words
                    result = result.model_copy(update={"error": f"not run: {self.paused}"})
                yield result


def collect_results(state: PhaseState, finished: dict[str, TaskResult],
                    stopped_reason: str = NOT_RUN, running: Collection[str] = (),
                    paused: Optional[str] = None) -> list[TaskResult]:
    """Every input task exactly once, in input order; unfinished ones are skipped with the reason
    (``running``: tasks that had started when the run was cancelled, and were stopped there)."""
    landed = Finished.of(finished)
    return list(ClosedResults(state, landed, made_results(state, landed, stopped_reason, running, paused), paused))


def made_results(state: PhaseState, finished: Finished, stopped_reason: str = NOT_RUN,
                 running: Collection[str] = (), paused: Optional[str] = None) -> dict[str, TaskResult]:
    """The results of the tasks that did not finish, each with why, from the finished tasks' flags alone."""
    flags: dict[str, int] = {}
    made: dict[str, TaskResult] = {}
    for task in _in_dependency_order(state):
        if task.task_id in finished:
            flags[task.task_id] = finished.flags[task.task_id]
            continue
        if task.task_id in running:
            made[task.task_id] = TaskResult(task_id=task.task_id, agent=task.agent, success=False, skipped=True,
                                            error=CANCELLED_RUNNING)
            flags[task.task_id] = SKIPPED
            continue
        blockers = [d for d in task.dependencies if not flags.get(d, 0) & SUCCESS]
        if paused and all(d in flags and flags[d] & NOT_RUN_FLAG for d in blockers):
            # the run paused at a cap before this task (or a dependency of it) could start: resume runs it
            made[task.task_id] = TaskResult(task_id=task.task_id, agent=task.agent, success=False, not_run=True,
                                            error=f"not run: {paused}")
            flags[task.task_id] = NOT_RUN_FLAG
            continue
        reasons = [f"dependency '{dep}' was skipped" if flags.get(dep, 0) & SKIPPED else f"dependency '{dep}' failed"
                   for dep in blockers]
        made[task.task_id] = TaskResult(
            task_id=task.task_id, agent=task.agent, success=False, skipped=True,
            error="skipped: " + ("; ".join(reasons) if reasons else stopped_reason))
        flags[task.task_id] = SKIPPED
    return made


def _in_dependency_order(state: PhaseState) -> list[TaskSpec]:
    by_id = {t.task_id: t for t in state.tasks_data}
    order = state.plan.order if state.plan else [t.task_id for t in state.tasks_data]
    return [by_id[tid] for tid in order if tid in by_id]


def close_execution(state: PhaseState, finished: "dict[str, TaskResult] | Finished", started: float, *,
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
    streamed = isinstance(finished, Finished)
    landed = finished if streamed else Finished.of(dict(finished))
    agents = {t.task_id: t.agent for t in state.tasks_data}
    gone = {task_id: TaskResult(task_id=task_id, agent=agents[task_id], success=False, error=error)
            for task_id, error in (lost or {}).items() if task_id in agents and task_id not in landed}
    if gone:  # a broken chord's lost tasks: reported failed (a close with results in memory)
        landed = Finished.of({**_in_memory(landed), **gone})
    stopped = cancel_seen or state.status == "cancelled"
    reason = None
    if paused and not stopped:
        spent = total([spent_before(state, {}), *landed.usage])
        began = started_epoch(state)
        reason = pause_reason(paused, effective_budget(state), spent, time.time() - began if began else None)
    made = made_results(state, landed, running=running if stopped else (), paused=reason)
    results = ClosedResults(state, landed, made, reason)
    # streamed: the results stay behind ``ClosedResults`` until the store writes them (a chunk at a time)
    state.task_results = results if streamed else list(results)  # type: ignore[assignment]
    result = summary_result(state, landed, made, started)
    if reason and not result.output_data.get("not_run"):
        reason = None  # the cap was reached by the last tasks: nothing is left to run, the run is not paused
    if reason:
        result.output_data["pause_reason"] = reason
        result.error = f"paused: {reason} ({result.output_data['not_run']} of {len(state.tasks_data)} tasks not run)"
    why = "cancelled" if stopped else broken
    if why:
        result.success = False
        result.error = f"{why} ({len(landed)} of {len(state.tasks_data)} tasks had finished)"
    state.integration = integration
    if integration is not None:
        result.output_data["integration"] = integration_summary(integration)
        if integration.conflicts and result.success:  # no work is lost, but the branch lacks some of it
            result.success = False
            result.error = left_out_error(integration)
    if integration_error:
        result.output_data["integration_error"] = integration_error
    check_threshold(result, state.config)
    state.record(result)
    status.after_execution(state, result, stopped, paused=reason)
    return result


def _in_memory(landed: Finished) -> dict[str, TaskResult]:
    ids = list(landed.flags)
    return dict(zip(ids, landed.fetch(ids)))


def summary_result(state: PhaseState, landed: Finished, made: dict[str, TaskResult], started: float) -> PhaseResult:
    """``execution_result`` from the flags, spend and workers of the finished tasks and the results made
    for the rest: no pass over the finished results themselves."""
    counts = {SUCCESS: 0, SKIPPED: 0, NOT_RUN_FLAG: 0}
    for task in state.tasks_data:
        tid = task.task_id
        flags = flags_of(made[tid]) if tid in made else landed.flags[tid]
        for flag in counts:
            counts[flag] += bool(flags & flag)
    return phase_result(len(state.tasks_data), counts[SUCCESS], counts[SKIPPED], counts[NOT_RUN_FLAG],
                        total(landed.usage), sorted(landed.workers), started)


def execution_result(results: list[TaskResult], started: float) -> PhaseResult:
    succeeded = sum(1 for r in results if r.success)
    skipped = sum(1 for r in results if r.skipped)
    not_run = sum(1 for r in results if r.not_run)
    return phase_result(len(results), succeeded, skipped, not_run, total(r.usage for r in results),
                        sorted({r.worker for r in results if r.worker}), started)


def phase_result(count: int, succeeded: int, skipped: int, not_run: int, usage: Usage, workers: list[str],
                 started: float) -> PhaseResult:
    failed = count - succeeded - skipped - not_run
    now = time.time()
    return PhaseResult(
        phase=PHASE, phase_name=PHASE.title, success=failed == 0 and skipped == 0 and not_run == 0,
        duration_ms=round((now - started) * 1000, 1) if started else 0.0,
        started_at=iso(datetime.fromtimestamp(started, tz=timezone.utc)) if started else None,
        completed_at=iso(utcnow()),
        error=None if failed == 0 and skipped == 0 else f"{failed} failed, {skipped} skipped",
        output_data={"total_tasks": count, "succeeded": succeeded, "failed": failed,
                     "skipped": skipped, "workers": workers,
                     **({"not_run": not_run} if not_run else {}),
                     **({"usage": usage.model_dump(mode="json")} if usage.calls else {})})
