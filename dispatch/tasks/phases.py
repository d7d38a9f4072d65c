"""One Celery task per phase, each taking and returning the run's ``PhaseState`` as JSON.

The CLI chains exactly the selected phases.  A task whose run has already
failed or been cancelled passes the state through untouched, so a chain never
needs an exception to stop early and the final state always reaches the caller.
"""
from __future__ import annotations

import time
from typing import Any

from celery import chord, shared_task

from ..config import DispatchConfig
from ..models import ExecutionPhase, PhaseState
from ..phases import PHASE_BODIES, PhaseEnv, is_critical_failure, run_phase
from ..runtime import Runtime
from ..control import RunLedger
from .agents import dispatch_agents, effective_timeout, finish_execution, task_payloads

STOPPED = ("failed", "cancelled")


def load_state(task: Any, state_json: dict) -> tuple[Runtime, PhaseState]:
    runtime = Runtime.for_app(task.app)
    state = PhaseState.model_validate(state_json)
    if state.status not in STOPPED and runtime.cancelled(state.run_id):
        state.status = "cancelled"
    return runtime, state


def report_progress(task: Any, state: PhaseState, phase: ExecutionPhase, **extra: Any) -> None:
    """A custom state Flower shows while the phase runs."""
    if task.request.id and not task.request.called_directly:
        task.update_state(state="PROGRESS", meta={"run_id": state.run_id, "phase": phase.value, **extra})


def finish(runtime: Runtime, state: PhaseState, phase: ExecutionPhase) -> dict:
    """Mark the run finished when this was its last selected phase, snapshot, return JSON."""
    if state.status not in STOPPED and runtime.cancelled(state.run_id):
        state.status = "cancelled"  # cancelled while this phase ran: do not overwrite what cancel saved
    if state.status not in STOPPED:
        state.status = "running"
        if not state.selected_phases or phase.number >= max(state.selected_phases):
            state.status = "succeeded"
    runtime.store.save(state)
    return state.model_dump(mode="json")


def execute_phase(task: Any, phase: ExecutionPhase, state_json: dict) -> dict:
    runtime, state = load_state(task, state_json)
    if state.status in STOPPED:
        return state.model_dump(mode="json")
    report_progress(task, state, phase)
    env = PhaseEnv(config=DispatchConfig.model_validate(state.settings), cache_dir=runtime.cache_dir,
                   quorum_cache=runtime.quorum_cache)
    result = run_phase(phase, state, env, PHASE_BODIES[phase])
    if is_critical_failure(result):
        state.status = "failed"
    elif phase == ExecutionPhase.CONTEXT_GATHERING and not result.success:
        state.global_context = None  # the guide: phase 0 failing turns context filtering off
    return finish(runtime, state, phase)


@shared_task(bind=True, name="dispatch.phase_0_context_gathering")
def phase_0_context_gathering(self: Any, state_json: dict) -> dict:
    return execute_phase(self, ExecutionPhase.CONTEXT_GATHERING, state_json)


@shared_task(bind=True, name="dispatch.phase_1_quorum_validation")
def phase_1_quorum_validation(self: Any, state_json: dict) -> dict:
    return execute_phase(self, ExecutionPhase.QUORUM_VALIDATION, state_json)


@shared_task(bind=True, name="dispatch.phase_2_task_planning")
def phase_2_task_planning(self: Any, state_json: dict) -> dict:
    return execute_phase(self, ExecutionPhase.TASK_PLANNING, state_json)


@shared_task(bind=True, name="dispatch.phase_3_context_filtering")
def phase_3_context_filtering(self: Any, state_json: dict) -> dict:
    return execute_phase(self, ExecutionPhase.CONTEXT_FILTERING, state_json)


@shared_task(bind=True, name="dispatch.phase_4_parallel_execution")
def phase_4_parallel_execution(self: Any, state_json: dict) -> dict:
    """Fan out: replace this task by a chord whose header grows as dependencies complete."""
    runtime, state = load_state(self, state_json)
    if state.status in STOPPED:
        return state.model_dump(mode="json")
    phase = ExecutionPhase.PARALLEL_EXECUTION
    report_progress(self, state, phase, done=0, total=len(state.tasks_data))
    state.status = "running"
    runtime.store.save(state)
    from ..scheduler import DagScheduler

    scheduler = DagScheduler(runtime.redis, runtime.prefix, state.run_id, runtime.settings.state_ttl_s)
    payloads = task_payloads(state)
    limits = {tid: effective_timeout(p) for tid, p in payloads.items()}
    RunLedger(runtime.redis, runtime.prefix, state.run_id, runtime.settings.state_ttl_s).start_phase_4(
        self.request.id, len(state.tasks_data), limits)
    # results kept from an earlier attempt (dispatch resume): those tasks are not run again
    kept = {r.task_id: r for r in state.task_results if r.success}
    first = scheduler.start(state, payloads, started=time.time(), finished=kept)
    if not first:  # nothing can start (no tasks): collect right away
        return finish_execution(runtime, scheduler)
    header = dispatch_agents(self, runtime, state.run_id, first, limits=limits)
    return self.replace(chord(header, self.app.signature("dispatch.collect", args=(state.run_id,))))


PHASE_TASKS = {
    ExecutionPhase.CONTEXT_GATHERING: phase_0_context_gathering,
    ExecutionPhase.QUORUM_VALIDATION: phase_1_quorum_validation,
    ExecutionPhase.TASK_PLANNING: phase_2_task_planning,
    ExecutionPhase.CONTEXT_FILTERING: phase_3_context_filtering,
    ExecutionPhase.PARALLEL_EXECUTION: phase_4_parallel_execution,
}


def phase_signature(app: Any, number: int, *args: Any, immutable: bool = False) -> Any:
    """By name, from ``app``: the client's app is not Celery's current app."""
    return app.signature(PHASE_TASKS[ExecutionPhase.of(number)].name, args=args, immutable=immutable)
