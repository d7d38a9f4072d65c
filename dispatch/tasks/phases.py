"""One Celery task per phase, each taking and returning the run's ``PhaseState`` through the store.

The message carries a ``StateRef`` (run id and state version), never the state,
so messages stay small at any number of tasks.  The CLI chains exactly the
selected phases.  A task whose run has already failed or been cancelled passes
the state through untouched (the pipeline decides), so a chain never needs an
exception to stop early.  A phase task delivered again after its phase ran (its
worker died before acking) finds the stored state past its message's version
and passes it on instead of running the phase twice.
"""
from __future__ import annotations

import time
from typing import Any

from celery import chord, shared_task
from celery.exceptions import Ignore
from celery.utils.log import get_task_logger

from dispatch.models import ExecutionPhase, PhaseState, StateRef
from dispatch.pipeline import status
from dispatch.pipeline.execution import kept_results, task_payloads
from dispatch.pipeline.phases import PhaseEnv, execute_phase
from dispatch.store import Deployment
from dispatch.tasks.agents import dispatch_agents, finish_execution
from dispatch.tasks.names import COLLECT_TASK, PHASE_TASK_NAMES, phase_task_name
from dispatch.tasks.support import deployment_of


logger = get_task_logger(__name__)


def report_progress(task: Any, state: PhaseState, phase: ExecutionPhase, **extra: Any) -> None:
    """A custom state Flower shows while the phase runs."""
    if task.request.id and not task.request.called_directly:
        task.update_state(state="PROGRESS", meta={"run_id": state.run_id, "phase": phase.value, **extra})


def load_state(deployment: Deployment, ref_json: dict) -> tuple[PhaseState, bool]:
    """The run's stored state, and whether it is the version this message was sent with (False: a later
    save happened: this phase, or a cancel, already moved the run on)."""
    ref = StateRef.model_validate(ref_json)
    state = deployment.store.load(ref.run_id)
    if state is None:  # an unknown run (or another deployment's): nothing is run, nothing written
        logger.warning("ignored a phase message for run %s: no such run in %s", ref.run_id,
                       deployment.store.describe())
        raise Ignore()
    if state.version < ref.version:
        raise LookupError(f"run {ref.run_id}: the stored state (version {state.version}) is older than this "
                          f"message's (version {ref.version}): the store lost data")
    return state, state.version == ref.version


def run_phase_task(task: Any, phase: ExecutionPhase, ref_json: dict) -> dict:
    deployment = deployment_of(task.app)
    state, fresh = load_state(deployment, ref_json)
    if not fresh:
        return state.ref().model_dump()
    if not status.is_stopped(state):
        report_progress(task, state, phase)
    env = PhaseEnv(config=state.config, cache_dir=deployment.cache_dir, quorum_cache=deployment.quorum_cache,
                   run_history=deployment.store.list_runs)
    if execute_phase(phase, state, env, lambda: deployment.cancelled(state.run_id)):
        deployment.store.save(state)
    return state.ref().model_dump()


@shared_task(bind=True, name=PHASE_TASK_NAMES[0])
def phase_0_context_gathering(self: Any, ref: dict) -> dict:
    return run_phase_task(self, ExecutionPhase.CONTEXT_GATHERING, ref)


@shared_task(bind=True, name=PHASE_TASK_NAMES[1])
def phase_1_quorum_validation(self: Any, ref: dict) -> dict:
    return run_phase_task(self, ExecutionPhase.QUORUM_VALIDATION, ref)


@shared_task(bind=True, name=PHASE_TASK_NAMES[2])
def phase_2_task_planning(self: Any, ref: dict) -> dict:
    return run_phase_task(self, ExecutionPhase.TASK_PLANNING, ref)


@shared_task(bind=True, name=PHASE_TASK_NAMES[3])
def phase_3_context_filtering(self: Any, ref: dict) -> dict:
    return run_phase_task(self, ExecutionPhase.CONTEXT_FILTERING, ref)


@shared_task(bind=True, name=PHASE_TASK_NAMES[4])
def phase_4_parallel_execution(self: Any, ref: dict) -> dict:
    """Fan out: replace this task by a chord whose header grows as dependencies complete."""
    deployment = deployment_of(self.app)
    state, fresh = load_state(deployment, ref)
    if not fresh:
        return rejoin_execution(self, deployment, state)
    if not status.is_stopped(state) and deployment.cancelled(state.run_id):
        status.cancelled(state)
    if status.is_stopped(state):
        return state.ref().model_dump()
    report_progress(self, state, ExecutionPhase.PARALLEL_EXECUTION, done=0, total=len(state.tasks_data))
    status.running(state)
    deployment.store.save(state)
    return start_execution(self, deployment, state)


def rejoin_execution(task: Any, deployment: Deployment, state: PhaseState) -> Any:
    """Phase 4 delivered again (its worker died after it started): join the phase under way, never restart it.

    The tasks phase 4 sent when it started are sent again in a chord of this
    delivery: those already claimed or finished return at once as duplicates
    (an agent runs once), those the dead worker never sent run now.  Whichever
    chord ends last closes the phase (``finish_execution``).
    """
    if status.is_stopped(state) or state.result_for(ExecutionPhase.PARALLEL_EXECUTION) is not None:
        return state.ref().model_dump()
    scheduler = deployment.scheduler(state.run_id)
    if not scheduler.exists():  # it died before starting the scheduler: start now
        return start_execution(task, deployment, state)
    finished = scheduler.results()
    again = [tid for tid in scheduler.started_tasks() if tid not in finished]
    if not again:
        raise Ignore()  # everything it sent has run: the first delivery's chord is alive and will close
    header = dispatch_agents(task, deployment, state.run_id, again)
    return task.replace(chord(header, task.app.signature(COLLECT_TASK, args=(state.run_id,))))


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
