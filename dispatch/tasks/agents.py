"""The agent task (one per input task, on the agents queue) and the collect step.

Messages carry only ``(run_id, task_id)``: the task's ``AgentPayload`` (its
agent configuration, context and timeout) waits in Redis, so nothing secret or
bulky travels through the broker or shows up in Flower.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Optional

from celery import shared_task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from celery.utils.log import get_task_logger
from celery.utils import uuid

from dispatch.agents import AgentInvocation, AgentOutcome, build_agent, build_prompt, run_agent
from dispatch.common.backoff import backoff_delay
from dispatch.config import ComponentConfig
from dispatch.errors import ConfigError
from dispatch.models import AgentPayload, ExecutionPhase, TaskResult, Usage, iso, utcnow
from dispatch.pipeline.execution import Finished, close_execution, flags_of
from dispatch.pipeline.workspace_run import conflict_resolver, dependency_note, integration_parts, run_isolated
from dispatch.workspace import WorkspaceError, integrate
from dispatch.common.spend import over_attempts, priced, total
from dispatch.store import (AlreadyClaimed, Completion, DagScheduler, Deployment, NoSuchRun, OverBudget, RunLedger,
                            SendKeys)
from dispatch.store import stall
from dispatch.store.parts import tasks_in_memory
from dispatch.tasks.names import AGENT_TASK, COLLECT_TASK, agent_queue, agent_shadow, celery_id
from dispatch.tasks.sending import sent_together
from dispatch.tasks.support import deployment_of

logger = get_task_logger(__name__)
TRANSIENT_RETRIES = 3
TRANSIENT_BACKOFF_S, TRANSIENT_CAP_S, TRANSIENT_JITTER = 1.0, 30.0, 0.5
# An agent's own timeout (timeout_s, else the run's timeout_seconds) fires first.  Celery's soft limit,
# a little later, interrupts code that ignores it (reported "timed out"); the hard limit then kills the
# pool process (prefork), so a stuck task always frees its slot.
SOFT_LIMIT_GRACE_S = 5.0
HARD_LIMIT_GRACE_S = 5.0


def agent_signature(app: Any, run_id: str, task_id: str, timeout_s: Optional[float] = None) -> Any:
    options: dict[str, Any] = {"queue": agent_queue(deployment_of(app).prefix)}
    if timeout_s:
        options.update(soft_time_limit=timeout_s + SOFT_LIMIT_GRACE_S,
                       time_limit=timeout_s + SOFT_LIMIT_GRACE_S + HARD_LIMIT_GRACE_S)
    return app.signature(AGENT_TASK, args=(run_id, task_id), shadow=agent_shadow(task_id), **options)


def dispatch_agents(task: Any, deployment: Deployment, run_id: str, task_ids: list[str],
                    limits: Optional[dict[str, float]] = None) -> list[Any]:
    """Signatures for ``task_ids`` with their time limits, recorded in the run's ledger before they are sent.

    For phase 4's first tasks and a redelivered completer's unsent ones; a
    normal completion does all of this inside its completion script instead
    (``DagScheduler.finish``).
    """
    if not task_ids:
        return []
    ledger = deployment.ledger(run_id)
    ids = {tid: celery_id(run_id, uuid()) for tid in task_ids}
    pipe = deployment.redis.pipeline(transaction=False)
    if limits is None:
        pipe.hmget(ledger.limits_key, task_ids)
    ledger.record({cid: f"agent:{tid}" for tid, cid in ids.items()}, pipe)
    replies = pipe.execute()
    if limits is None:
        limits = dict(zip(task_ids, (float(x) if x else None for x in replies[0])))
    return [agent_signature(task.app, run_id, tid, limits.get(tid)).set(task_id=ids[tid]) for tid in task_ids]


# Results of agent tasks live in the scheduler's hash, not in Celery's backend: the chord still
# counts each one (on_chord_part_return runs with ignore_result), but the per-task SET + PUBLISH
# of its meta, and the STARTED write, are skipped.  Flower follows agent tasks through events,
# and phase 4's PROGRESS meta carries done/total.
@shared_task(bind=True, name=AGENT_TASK, acks_late=True, reject_on_worker_lost=True, track_started=False,
             ignore_result=True)
def agent_task(self: Any, run_id: str, task_id: str, spent: Optional[dict] = None) -> dict:
    """Run one task on its agent, record the result, dispatch whatever it unblocks.

    ``spent``: the usage of its earlier attempts (a transient retry carries it), kept in its result.

    Never raises (but for a transient retry): an exception here would break the
    chord, so every failure becomes a failed ``TaskResult``.
    """
    deployment = deployment_of(self.app)
    scheduler = deployment.scheduler(run_id)
    if (self.request.delivery_info or {}).get("redelivered") and \
            scheduler.client.hexists(scheduler.key("results"), task_id):
        # its worker died after recording the result, before acking: the result stands, and whatever
        # that completion unblocked but may not have sent goes out now
        unsent = scheduler.unsent(task_id)
        add_to_chord(self, dispatch_agents(self, deployment, run_id, unsent))
        if unsent:
            scheduler.sent(task_id)
        return {"task_id": task_id, "success": None, "duplicate": True}
    started, t0 = utcnow(), time.perf_counter()
    agent_name, prompt, payload, changes, not_run = "?", None, None, None, False
    try:
        raw, cancelled, deps, commits = scheduler.prepare(task_id, deployment.keys.cancel(run_id), self.request.id)
        remember_chord(self, deployment, run_id)  # after prepare: a message of an unknown run writes nothing
        payload = AgentPayload.model_validate_json(raw)
        agent_name = payload.task.agent
        if payload.workspace is not None and not cancelled:
            outcome, changes, prompt = invoke_in_checkout(self, run_id, payload, deps, commits)
        else:
            outcome, prompt = invoke_agent(self, run_id, payload, cancelled, deps)
    except AlreadyClaimed:
        # sent twice (its completer was redelivered after sending it): the other Celery task runs it
        return {"task_id": task_id, "success": None, "duplicate": True}
    except OverBudget as exc:  # it would pass a cap: it does not start, and the run pauses (resume runs it)
        outcome, not_run = AgentOutcome(success=False, error=f"not run: the run's {exc.cap} is reached"), True
        agent_name = exc.agent or agent_name
    except NoSuchRun:
        logger.warning("ignored an agent message for run %s (task %s): no phase 4 of it under way here",
                       run_id, task_id)
        return {"task_id": task_id, "success": None, "ignored": True}
    except SoftTimeLimitExceeded:
        outcome = AgentOutcome(success=False, error="SoftTimeLimitExceeded")
    except Exception as exc:  # noqa: BLE001 - recorded as the task's failure
        outcome = AgentOutcome(success=False, error=f"{type(exc).__name__}: {exc}")
    if not outcome.success and (outcome.error or "").startswith("SoftTimeLimitExceeded"):
        # raised into the agent by the pool (it may have been caught and reported as an error there)
        soft = (self.request.timelimit or (None, None))[1]
        outcome = AgentOutcome(success=False, error=f"timed out: the task ran past its soft time limit "
                                                    f"({soft:g}s) and was interrupted" if soft else "timed out")
    if not outcome.success and outcome.transient and self.request.retries < TRANSIENT_RETRIES:
        # the server's Retry-After is the floor (the provider limiter holds every worker to it as well), so
        # the retried task waits in the broker, not in a worker thread; jittered so failures that came
        # together do not retry together
        delay = backoff_delay(self.request.retries, TRANSIENT_BACKOFF_S, TRANSIENT_CAP_S, TRANSIENT_JITTER,
                              retry_after_s=outcome.retry_after_s)
        earlier = over_attempts(spent, priced(outcome.usage, payload.prices) if payload else outcome.usage)
        raise self.retry(countdown=delay, max_retries=TRANSIENT_RETRIES,
                         kwargs={"spent": earlier.model_dump(mode="json") if earlier else None})
    result = TaskResult(task_id=task_id, agent=agent_name, success=outcome.success, output=outcome.output,
                        error=outcome.error, duration_ms=round((time.perf_counter() - t0) * 1000, 1),
                        worker=self.request.hostname, attempts=self.request.retries + 1,
                        started_at=iso(started), completed_at=iso(utcnow()), prompt=prompt, changes=changes,
                        usage=over_attempts(spent, priced(outcome.usage, payload.prices) if payload else outcome.usage),
                        not_run=not_run)
    every = payload.progress_every if payload else 1
    # for task_postrun (telemetry): the last part's collect may retire the scheduler's keys before it runs
    self.request.dispatch_result = result
    completion = scheduler.finish(result, send_keys(deployment.ledger(run_id), every))
    if completion.progress_target is not None:
        report_phase_progress(self, run_id, completion)
    send_next(self, scheduler, task_id, completion.sends)
    return {"task_id": task_id, "success": result.success}


def send_next(task: Any, scheduler: DagScheduler, task_id: str, sends: list[tuple[str, str, Optional[float]]]) -> None:
    """What ``task_id``'s completion unblocked: added to phase 4's chord (then its outbox entry cleared), or,
    when phase 4 runs its tasks in this process (embedded: ``runtime.embedded_executor``, named by the
    request), queued there: nothing can be redelivered, the outbox entry goes with the run's keys."""
    inline = getattr(task.request, "dispatch_inline", None)
    if inline is not None:
        for tid, celery_id, limit in sends:
            inline.submit(tid, celery_id, limit)
        return
    add_to_chord(task, [agent_signature(task.app, scheduler.run_id, tid, limit).set(task_id=celery_id)
                        for tid, celery_id, limit in sends])
    if sends:
        scheduler.sent(task_id)


def add_to_chord(task: Any, signatures: list[Any]) -> None:
    """Celery's ``Task.add_to_chord`` for a completion's sends together: the chord's size grows by one
    INCRBY for all of them (Celery's makes one INCR each: a thousand round trips when a completion starts
    a thousand tasks), then each is sent.  As with Celery's, a completer that dies between the two leaves
    the chord counting sends that never came: its redelivery sends them (``unsent``), and the stall
    watchdog closes a chord that still stays open once nothing runs or waits.  The messages go out
    together (``tasks.sending``), before the caller clears the completion's outbox."""
    if not signatures:
        return
    request = task.request
    if not request.chord:
        raise ValueError("Current task is not member of any chord")
    for signature in signatures:
        signature.set(group_id=request.group, group_index=request.group_index, chord=request.chord,
                      root_id=request.root_id)
        signature.freeze()
    backend = task.backend
    backend.client.incrby(backend.get_key_for_group(request.group, ".t"), len(signatures))
    with sent_together(task.app):
        for signature in signatures:
            signature.delay()


_CHORDS_SEEN: set[tuple[str, str]] = set()  # (run, group) this process has recorded: one write per chord


def remember_chord(task: Any, deployment: Deployment, run_id: str) -> None:
    """The chord this task is a part of, recorded for the stall watchdog (``dispatch.store.stall``): a lost
    message of the run is sent again as a part of it."""
    group, chord = task.request.group, task.request.chord
    # not embedded: its in-memory broker loses no message
    if group and chord and (run_id, group) not in _CHORDS_SEEN and not deployment.settings.embedded:
        try:
            stall.remember_chord(deployment.redis, deployment.keys, run_id, group, dict(chord), deployment.ttl_s)
        except Exception as exc:  # noqa: BLE001 - bookkeeping: the next task of the chord records it
            logger.debug("run %s: chord not recorded (%s)", run_id, exc)
            return
        if len(_CHORDS_SEEN) > 10_000:  # a long-lived worker: forget old runs (a repeat write is harmless)
            _CHORDS_SEEN.clear()
        _CHORDS_SEEN.add((run_id, group))


def send_keys(ledger: RunLedger, progress_every: int) -> SendKeys:
    """The keys a completion updates for what it dispatches: the run's ledger, limits and progress target."""
    return SendKeys(ledger=ledger.key, limits=ledger.limits_key, progress=ledger.progress_key,
                    progress_every=progress_every)


def report_phase_progress(task: Any, run_id: str, completion: Completion) -> None:
    """``done/total`` on phase 4's task id, where Flower and the CLI look (every ~1% of the run)."""
    target = RunLedger.parse_target(completion.progress_target)
    if target is not None:
        meta = {"run_id": run_id, "phase": "PARALLEL_EXECUTION", "done": completion.finished, "total": target[1]}
        if completion.spent_cost or completion.spent_tokens:  # the run's spend so far
            meta.update(cost_usd=round(completion.spent_cost, 6), tokens=completion.spent_tokens)
        task.backend.store_result(target[0], meta, "PROGRESS")


def invoke_in_checkout(task: Any, run_id: str, payload: AgentPayload, deps: dict[str, Any],
                       commits: dict[str, str]) -> tuple[AgentOutcome, Any, str]:
    """The agent in a checkout of its own; its changes become the task's commit (``TaskResult.changes``)."""
    prompts: list[str] = []

    def invoke(workdir: str, changed: dict[str, list[str]]) -> AgentOutcome:
        outcome, prompt = invoke_agent(task, run_id, payload, False, deps, workdir, dependency_note(changed))
        prompts.append(prompt)
        return outcome

    outcome, changes = run_isolated(payload, commits, invoke)
    return outcome, changes, prompts[0] if prompts else ""


def invoke_agent(task: Any, run_id: str, payload: AgentPayload, cancelled: bool, deps: dict[str, Any],
                 workdir: Optional[str] = None, note: str = "") -> tuple[AgentOutcome, str]:
    prompt = build_prompt(payload.task, payload.context, deps, payload.user_prompt, payload.request_extras) + note
    if cancelled:
        return AgentOutcome(success=False, error="cancelled"), prompt
    invocation = AgentInvocation(task=payload.task, context=payload.context, dependency_outputs=deps,
                                 user_prompt=payload.user_prompt, workspace_path=workdir or payload.workspace_path,
                                 run_id=run_id, attempt=task.request.retries + 1, timeout_s=payload.timeout_s,
                                 prompt=prompt, request_extras=payload.request_extras, prices=payload.prices,
                                 max_cost_usd=payload.max_cost_usd)
    agent = cached_agent(payload.task.agent, payload.agent.model_dump_json())
    return run_agent(agent, invocation), prompt


@functools.lru_cache(maxsize=256)
def cached_agent(name: str, config_json: str) -> Any:
    """One agent instance per (name, configuration) per worker process: options are validated once,
    and clients an agent holds (HTTP connections) are reused across its tasks."""
    return build_agent(name, ComponentConfig.model_validate_json(config_json))


def finish_execution(deployment: Deployment, scheduler: DagScheduler) -> dict:
    """Close phase 4 from the scheduler's records, save the run, return a reference to its state.

    Closed only when the scheduler's own records say nothing is running or
    waiting, and by one caller: a phase 4 delivered twice has two chords over
    one scheduler, and the first to end early (its parts were duplicates) must
    store no result (``Ignore``) rather than close the run with tasks missing.
    """
    if scheduler.state_ref() is None:
        stored = deployment.store.load_lean(scheduler.run_id)
        if stored is not None and stored.result_for(ExecutionPhase.PARALLEL_EXECUTION) is not None:
            raise Ignore()  # another chord of this phase closed it
        raise LookupError(f"run {scheduler.run_id}: phase 4 state expired before collection")
    if not scheduler.quiet() or not scheduler.claim_close():
        raise Ignore()
    with scheduler.holding_close():
        state = close_and_save(deployment, scheduler)
    deployment.retire(state.run_id)  # scheduler and ledger keys: a closed run keeps only its state
    return state.ref().model_dump()


def close_and_save(deployment: Deployment, scheduler: DagScheduler) -> Any:
    """The run's state with phase 4 closed from the scheduler's records, saved (the close's lease held)."""
    # lean: a large run's plan and contexts stay packed, and are saved again as they were read
    state = tasks_in_memory(deployment.store.load_lean(scheduler.run_id))
    if state is None:
        raise LookupError(f"run {scheduler.run_id}: its state left the store ({deployment.store.describe()}) "
                          f"before phase 4 was collected")
    if state.workspace is not None and state.workspace.isolation == "git":
        finished: Any = scheduler.results()  # the integration reads every task's change
        integration, error = integrate_changes(state, finished)
    else:  # read from the scheduler's hash a chunk at a time, twice, rather than held as objects at once
        finished, integration, error = scanned(scheduler), None, None
    close_execution(state, finished, scheduler.started(), cancel_seen=deployment.cancelled(state.run_id),
                    integration=integration, integration_error=error, paused=scheduler.paused())
    deployment.store.save(state)  # before ``retire``: the results are read from the scheduler's hash here
    return state


SCAN_BATCH = 1000


def scanned(scheduler: DagScheduler) -> Finished:
    """The finished tasks' flags, spend and workers from one HSCAN of the results hash (one batch of
    ``TaskResult`` objects alive at a time); the results themselves are fetched again by id when the
    state is written."""
    key = scheduler.key("results")
    flags: dict[str, int] = {}
    spent, workers = Usage(), set()
    cursor = 0
    while True:
        cursor, batch = scheduler.client.hscan(key, cursor, count=SCAN_BATCH)
        for raw_id, raw in batch.items():
            task_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            if task_id in flags:  # HSCAN may return an entry twice
                continue
            result = TaskResult.model_validate_json(raw)
            flags[task_id] = flags_of(result)
            spent = total([spent, result.usage])
            if result.worker:
                workers.add(result.worker)
        if not cursor:
            break

    def fetch(task_ids: list[str]) -> list[TaskResult]:
        raws = scheduler.client.hmget(key, task_ids)
        gone = [tid for tid, raw in zip(task_ids, raws) if raw is None]
        if gone:
            raise LookupError(f"run {scheduler.run_id}: the result of task '{gone[0]}' left the scheduler "
                              f"before the close wrote it")
        return [TaskResult.model_validate_json(raw) for raw in raws]

    return Finished(flags, [spent], workers, fetch)


def integrate_changes(state: Any, finished: dict[str, TaskResult]) -> tuple[Any, Optional[str]]:
    """Every succeeded task's change merged onto the base (``refs/heads/dispatch/<run_id>``), when the run
    has a git workspace; a git failure is reported, never a lost run (each task's ref stays).  The changes
    a person dropped at the checkpoint stay out (``integration_parts``)."""
    if state.workspace is None or state.workspace.isolation != "git":
        return None, None
    succeeded, dropped = integration_parts(state, finished)
    if not any(finished[tid].changes.files for tid, _ in [*succeeded, *dropped]):
        return None, None  # nothing changed: no branch to make
    try:
        return integrate(state.workspace, succeeded, resolver=conflict_resolver(state), excluded=dropped,
                         timeout=state.config.workspace.git_timeout_s), None
    except (WorkspaceError, ConfigError) as exc:
        logger.warning("run %s: integration failed: %s", state.run_id, exc)
        return None, str(exc)


@shared_task(bind=True, name=COLLECT_TASK)
def collect_task(self: Any, _header: Any, run_id: str) -> dict:
    deployment = deployment_of(self.app)
    return finish_execution(deployment, deployment.scheduler(run_id))
