"""One Celery task per phase, each taking and returning the run's ``PhaseState`` as JSON.

The CLI chains exactly the selected phases.  A task whose run has already
failed or been cancelled passes the state through untouched (the pipeline
decides), so a chain never needs an exception to stop early.
"""
from __future__ import annotations

import time
from typing import Any

from celery import chord, shared_task

from dispatch.models import ExecutionPhase, PhaseState
from dispatch.pipeline import status
from dispatch.pipeline.execution import kept_results, task_payloads
from dispatch.pipeline.phases import PhaseEnv, execute_phase
from dispatch.store import Deployment
from dispatch.tasks.agents import dispatch_agents, finish_execution
from dispatch.tasks.names import COLLECT_TASK, PHASE_TASK_NAMES, phase_task_name
from dispatch.tasks.support import deployment_of


def report_progress(task: Any, state: PhaseState, phase: ExecutionPhase, **extra: Any) -> None:
    """A custom state Flower shows while the phase runs."""
    if task.request.id and not task.request.called_directly:
        task.update_state(state="PROGRESS", meta={"run_id": state.run_id, "phase": phase.value, **extra})


def run_phase_task(task: Any, phase: ExecutionPhase, state_json: dict) -> dict:
    deployment = deployment_of(task.app)
    state = PhaseState.model_validate(state_json)
    if not status.is_stopped(state):
        report_progress(task, state, phase)
    env = PhaseEnv(config=state.config, cache_dir=deployment.cache_dir, quorum_cache=deployment.quorum_cache)
    if execute_phase(phase, state, env, lambda: deployment.cancelled(state.run_id)):
        deployment.store.save(state)
    return state.model_dump(mode="json")


@shared_task(bind=True, name=PHASE_TASK_NAMES[0])
def phase_0_context_gathering(self: Any, state_json: dict) -> dict:
    return run_phase_task(self, ExecutionPhase.CONTEXT_GATHERING, state_json)


@shared_task(bind=True, name=PHASE_TASK_NAMES[1])
def phase_1_quorum_validation(self: Any, state_json: dict) -> dict:
    return run_phase_task(self, ExecutionPhase.QUORUM_VALIDATION, state_json)


@shared_task(bind=True, name=PHASE_TASK_NAMES[2])
def phase_2_task_planning(self: Any, state_json: dict) -> dict:
    return run_phase_task(self, ExecutionPhase.TASK_PLANNING, state_json)


@shared_task(bind=True, name=PHASE_TASK_NAMES[3])
def phase_3_context_filtering(self: Any, state_json: dict) -> dict:
    return run_phase_task(self, ExecutionPhase.CONTEXT_FILTERING, state_json)


@shared_task(bind=True, name=PHASE_TASK_NAMES[4])
def phase_4_parallel_execution(self: Any, state_json: dict) -> dict:
    """Fan out: replace this task by a chord whose header grows as dependencies complete."""
    deployment = deployment_of(self.app)
    state = PhaseState.model_validate(state_json)
    if not status.is_stopped(state) and deployment.cancelled(state.run_id):
        status.cancelled(state)
    if status.is_stopped(state):
        return state.model_dump(mode="json")
    report_progress(self, state, ExecutionPhase.PARALLEL_EXECUTION, done=0, total=len(state.tasks_data))
    status.running(state)
    deployment.store.save(state)
    return start_execution(self, deployment, state)


def start_execution(task: Any, deployment: Deployment, state: PhaseState) -> Any:
    scheduler = deployment.scheduler(state.run_id)
    payloads = task_payloads(state)
    limits = {tid: p.timeout_s for tid, p in payloads.items()}
    deployment.ledger(state.run_id).start_phase_4(task.request.id, len(state.tasks_data), limits)
    first = scheduler.start(state, payloads, started=time.time(), finished=kept_results(state))
    if not first:  # nothing can start (no tasks, or all kept): collect right away
        return finish_execution(deployment, scheduler)
    header = dispatch_agents(task, deployment, state.run_id, first, limits=limits)
    return task.replace(chord(header, task.app.signature(COLLECT_TASK, args=(state.run_id,))))


PHASE_TASKS = {
    ExecutionPhase.CONTEXT_GATHERING: phase_0_context_gathering,
    ExecutionPhase.QUORUM_VALIDATION: phase_1_quorum_validation,
    ExecutionPhase.TASK_PLANNING: phase_2_task_planning,
    ExecutionPhase.CONTEXT_FILTERING: phase_3_context_filtering,
    ExecutionPhase.PARALLEL_EXECUTION: phase_4_parallel_execution,
}


def phase_signature(app: Any, number: int, *args: Any, immutable: bool = False) -> Any:
    """By name, from ``app``: the client's app is not Celery's current app."""
    return app.signature(phase_task_name(number), args=args, immutable=immutable)
