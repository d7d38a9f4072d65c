"""One Celery task per phase, each taking and returning the run's ``PhaseState`` through the store.

The message carries a ``StateRef`` (run id and state version), never the state,
so messages stay small at any number of tasks.  The CLI chains exactly the
selected phases, as the steps of ``pipeline.phase_graph`` (phases 0 and 1 in a
group: a step after a group gets the list of its phases' refs, and reads the
newest).  A task whose run has already failed or been cancelled passes
the state through untouched (the pipeline decides), so a chain never needs an
exception to stop early.  A phase task delivered again after its phase ran (its
worker died before acking) finds the stored state past its message's version
and passes it on instead of running the phase twice; a phase of a parallel step
tells its own earlier run from a peer's save by the state's ``ran_from``, and
saves by merging its writes into what its peer stored (``store.update``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from celery import chord, shared_task
from celery.exceptions import Ignore
from celery.utils.log import get_task_logger

from dispatch.models import ExecutionPhase, PhaseState, StateRef
from dispatch.pipeline import phase_graph, status
from dispatch.pipeline.execution import iter_task_payloads, kept_results, task_agents, task_limits
from dispatch.pipeline.phases import PhaseEnv, execute_phase
from dispatch.store import Deployment
from dispatch.store.parts import tasks_in_memory
from dispatch.tasks.agents import dispatch_agents, finish_execution
from dispatch.tasks.names import COLLECT_TASK, PHASE_TASK_NAMES, phase_task_name
from dispatch.tasks.sending import sent_together
from dispatch.tasks.support import deployment_of


logger = get_task_logger(__name__)


def report_progress(task: Any, state: PhaseState, phase: ExecutionPhase, **extra: Any) -> None:
    """A custom state Flower shows while the phase runs."""
    if task.request.id and not task.request.called_directly:
        task.update_state(state="PROGRESS", meta={"run_id": state.run_id, "phase": phase.value, **extra})


def newest_ref(ref_json: dict | list) -> StateRef:
    """A step after a group is given the list of its phases' refs: the last one saved holds them all."""
    if isinstance(ref_json, list):
        return max((newest_ref(item) for item in ref_json), key=lambda ref: ref.version)
    return StateRef.model_validate(ref_json)


def load_state(deployment: Deployment, ref_json: dict | list,
               phase: ExecutionPhase | None = None, lean: bool = False) -> tuple[PhaseState, bool]:
    """The run's stored state, and whether this phase is to run on it (False: a later save happened: this
    phase, or a cancel, already moved the run on).  A phase of a parallel step whose peer saved first still
    runs (``phase_graph.ran_beside_peers``).  ``lean``: its tasks in memory, the rest of a large run's parts
    (plan, contexts, results) read when used and saved again as they were read (``store.parts``)."""
    ref = newest_ref(ref_json)
    state = tasks_in_memory(deployment.store.load_lean(ref.run_id)) if lean else deployment.store.load(ref.run_id)
    if state is None:  # an unknown run (or another deployment's): nothing is run, nothing written
        logger.warning("ignored a phase message for run %s: no such run in %s", ref.run_id,
                       deployment.store.describe())
        raise Ignore()
    if state.version < ref.version:
        raise LookupError(f"run {ref.run_id}: the stored state (version {state.version}) is older than this "
                          f"message's (version {ref.version}): the store lost data")
    if state.version == ref.version:
        return state, True
    return state, phase is not None and phase_graph.ran_beside_peers(phase.number, state, ref.version)


def run_phase_task(task: Any, phase: ExecutionPhase, ref_json: dict | list) -> dict:
    deployment = deployment_of(task.app)
    base = newest_ref(ref_json).version
    state, fresh = load_state(deployment, ref_json, phase)
    if not fresh:
        return state.ref().model_dump()
    phase_graph.as_branch_saw_it(state, phase.number, base)
    if not status.is_stopped(state):
        report_progress(task, state, phase)
    env = PhaseEnv(config=state.config, cache_dir=deployment.cache_dir, quorum_cache=deployment.quorum_cache,
                   run_history=deployment.store.list_runs)
    if execute_phase(phase, state, env, lambda: deployment.cancelled(state.run_id)):
        # a peer of a parallel step may have saved meanwhile: merge this phase's writes into what it stored
        mine = state
        state = deployment.store.update(  # lean: the merge reads its peer's state only for what it wrote
            mine.run_id, lambda stored: phase_graph.merge_branch(stored, mine, phase.number, base), lean=True)
    return state.ref().model_dump()


@shared_task(bind=True, name=PHASE_TASK_NAMES[0])
def phase_0_context_gathering(self: Any, ref: dict | list) -> dict:
    return run_phase_task(self, ExecutionPhase.CONTEXT_GATHERING, ref)


@shared_task(bind=True, name=PHASE_TASK_NAMES[1])
def phase_1_quorum_validation(self: Any, ref: dict | list) -> dict:
    return run_phase_task(self, ExecutionPhase.QUORUM_VALIDATION, ref)


@shared_task(bind=True, name=PHASE_TASK_NAMES[2])
def phase_2_task_planning(self: Any, ref: dict | list) -> dict:
    return run_phase_task(self, ExecutionPhase.TASK_PLANNING, ref)


@shared_task(bind=True, name=PHASE_TASK_NAMES[3])
def phase_3_context_filtering(self: Any, ref: dict | list) -> dict:
    return run_phase_task(self, ExecutionPhase.CONTEXT_FILTERING, ref)


@shared_task(bind=True, name=PHASE_TASK_NAMES[4])
def phase_4_parallel_execution(self: Any, ref: dict | list) -> dict:
    """Fan out: replace this task by a chord whose header grows as dependencies complete.

    The run's state is read and let go in ``begin_execution``; the fan-out happens in this frame, which
    never held it.  ``Task.replace`` ends in ``Ignore``, and the exception's traceback keeps every frame
    it passed through, with their locals, for as long as Celery keeps the exception: at 100k tasks a
    worker held the state (about 380 MB) for minutes while the phase's agent tasks ran, and an embedded
    run held it through the whole of phase 4."""
    deployment = deployment_of(self.app)
    return fan_out(self, deployment, begin_execution(self, deployment, ref))


@dataclass(frozen=True)
class FanOut:
    """What phase 4 starts with: its first agent signatures (at most ``TAKE_MAX``) and their time limits."""

    run_id: str
    header: list[Any]
    limits: dict[str, Any] = field(default_factory=dict)


def begin_execution(task: Any, deployment: Deployment, ref: dict | list) -> FanOut | dict:
    """The run's phase 4 started (its scheduler written), or joined when delivered again: what to fan out,
    or the phase's result when there is nothing to run."""
    state, fresh = load_state(deployment, ref, lean=True)
    if not fresh:
        return rejoin_execution(task, deployment, state)
    if not status.is_stopped(state) and deployment.cancelled(state.run_id):
        status.cancelled(state)
    if status.is_stopped(state):
        return state.ref().model_dump()
    report_progress(task, state, ExecutionPhase.PARALLEL_EXECUTION, done=0, total=len(state.tasks_data))
    status.running(state)
    deployment.store.save(state)
    return start_execution(task, deployment, state)


def fan_out(task: Any, deployment: Deployment, step: FanOut | dict) -> dict:
    """Replace phase 4 by its chord (an embedded run: run the tasks on this process's threads instead)."""
    if not isinstance(step, FanOut):
        return step
    inline = getattr(task.app, "dispatch_phase_4_inline", None)  # embedded: runs them here, no chord
    if inline is not None:
        return inline(task, deployment, step.run_id, step.header, step.limits)
    with sent_together(task.app):  # the chord's parts, up to TAKE_MAX of them, in a few round trips
        return task.replace(chord(step.header, task.app.signature(COLLECT_TASK, args=(step.run_id,))))


def rejoin_execution(task: Any, deployment: Deployment, state: PhaseState) -> FanOut | dict:
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
    return FanOut(state.run_id, dispatch_agents(task, deployment, state.run_id, again))


def start_execution(task: Any, deployment: Deployment, state: PhaseState) -> FanOut | dict:
    """Store the run's scheduling state, then name what can start now (at most ``TAKE_MAX`` tasks, in
    a chord whose body closes the phase); nothing per task is kept once it is written."""
    scheduler = deployment.scheduler(state.run_id)
    configs = task_agents(state)
    limits = task_limits(state, configs)
    deployment.ledger(state.run_id).start_phase_4(task.request.id, len(state.tasks_data), limits)
    first = scheduler.start(state, iter_task_payloads(state, configs), started=time.time(),
                            finished=kept_results(state))
    limits = {tid: limits[tid] for tid in first}
    if not first:  # nothing can start (no tasks, or all kept): collect right away
        return finish_execution(deployment, scheduler)
    return FanOut(state.run_id, dispatch_agents(task, deployment, state.run_id, first, limits=limits), limits)


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
