"""The agent task (one per input task, on the agents queue) and the collect step.

Messages carry only ``(run_id, task_id)``: the task, its context and its agent
configuration wait in Redis, so nothing secret or bulky travels through the
broker or shows up in Flower.
"""
from __future__ import annotations

import functools
import json
import time
from typing import Any, Optional

from celery import shared_task

from ..celery_app import AGENT_QUEUE
from ..config import ComponentConfig, DispatchConfig
from ..models import PhaseState, TaskContext, TaskResult, TaskSpec, iso, utcnow
from ..phases import check_threshold, collect_results, execution_result
from ..runtime import Runtime
from ..scheduler import AlreadyClaimed, Completion, DagScheduler, SendKeys

TRANSIENT_RETRIES = 3
# An agent's own timeout (timeout_s, else the run's timeout_seconds) fires first.  Celery's soft limit,
# a little later, interrupts code that ignores it (reported "timed out"); the hard limit then kills the
# pool process (prefork), so a stuck task always frees its slot.
SOFT_LIMIT_GRACE_S = 5.0
HARD_LIMIT_GRACE_S = 5.0


def task_payloads(state: PhaseState) -> dict[str, dict]:
    """Everything one agent task needs, resolved once at fan-out time."""
    from ..agents import resolve_agent

    config = DispatchConfig.model_validate(state.settings)
    shared = {"user_prompt": state.user_prompt, "workspace_path": state.workspace_path,
              "timeout_s": state.run_config.timeout_seconds,
              "progress_every": max(1, len(state.tasks_data) // 100),
              # unknown top-level input keys; the reviewer's note for the quorum planner is not one
              "request_extras": {k: v for k, v in state.input_extras.items() if k != "quorum_feedback"}}
    payloads = {}
    for task in state.tasks_data:
        context = state.task_contexts.get(task.task_id)
        payloads[task.task_id] = {
            **shared,
            "task": task.model_dump(mode="json"),
            "agent": resolve_agent(task.agent, config).model_dump(mode="json"),
            "context": context.model_dump(mode="json") if context else None,
        }
    return payloads


def effective_timeout(payload: dict) -> float:
    return float((payload.get("agent") or {}).get("timeout_s") or payload["timeout_s"])


def agent_signature(app: Any, run_id: str, task_id: str, timeout_s: Optional[float] = None) -> Any:
    options: dict[str, Any] = {"queue": AGENT_QUEUE}
    if timeout_s:
        options.update(soft_time_limit=timeout_s + SOFT_LIMIT_GRACE_S,
                       time_limit=timeout_s + SOFT_LIMIT_GRACE_S + HARD_LIMIT_GRACE_S)
    return app.signature("dispatch.agent", args=(run_id, task_id), **options)


def dispatch_agents(task: Any, runtime: Runtime, run_id: str, task_ids: list[str],
                    limits: Optional[dict[str, float]] = None) -> list[Any]:
    """Signatures for ``task_ids`` with their time limits, recorded in the run's ledger before they are sent.

    For phase 4's first tasks and a redelivered completer's unsent ones; a
    normal completion does all of this inside its completion script instead
    (``DagScheduler.finish``).
    """
    from celery.utils import uuid

    from ..control import RunLedger

    if not task_ids:
        return []
    ledger = RunLedger(runtime.redis, runtime.prefix, run_id, runtime.settings.state_ttl_s)
    ids = {tid: uuid() for tid in task_ids}
    pipe = runtime.redis.pipeline(transaction=False)
    if limits is None:
        pipe.hmget(ledger.limits_key, task_ids)
    ledger.record({cid: f"agent:{tid}" for tid, cid in ids.items()}, pipe)
    replies = pipe.execute()
    if limits is None:
        limits = dict(zip(task_ids, (float(x) if x else None for x in replies[0])))
    return [agent_signature(task.app, run_id, tid, limits.get(tid)).set(task_id=ids[tid]) for tid in task_ids]


def scheduler_for(task: Any, run_id: str) -> tuple[Runtime, DagScheduler]:
    runtime = Runtime.for_app(task.app)
    return runtime, DagScheduler(runtime.redis, runtime.prefix, run_id, runtime.settings.state_ttl_s)


# Results of agent tasks live in the scheduler's hash, not in Celery's backend: the chord still
# counts each one (on_chord_part_return runs with ignore_result), but the per-task SET + PUBLISH
# of its meta, and the STARTED write, are skipped.  Flower follows agent tasks through events,
# and phase 4's PROGRESS meta carries done/total.
@shared_task(bind=True, name="dispatch.agent", acks_late=True, reject_on_worker_lost=True, track_started=False,
             ignore_result=True)
def agent_task(self: Any, run_id: str, task_id: str) -> dict:
    """Run one task on its agent, record the result, dispatch whatever it unblocks.

    Never raises (but for a transient retry): an exception here would break the
    chord, so every failure becomes a failed ``TaskResult``.
    """
    from celery.exceptions import SoftTimeLimitExceeded

    from ..agents import AgentOutcome

    runtime, scheduler = scheduler_for(self, run_id)
    if (self.request.delivery_info or {}).get("redelivered") and \
            scheduler.client.hexists(scheduler.key("results"), task_id):
        # its worker died after recording the result, before acking: the result stands, and whatever
        # that completion unblocked but may not have sent goes out now
        unsent = scheduler.unsent(task_id)
        for signature in dispatch_agents(self, runtime, run_id, unsent):
            self.add_to_chord(signature)
        if unsent:
            scheduler.sent(task_id)
        return {"task_id": task_id, "success": None, "duplicate": True}
    started, t0 = utcnow(), time.perf_counter()
    agent_name, prompt, payload = "?", None, None
    try:
        payload, cancelled, deps = scheduler.prepare(task_id, runtime.cancel_key(run_id), self.request.id)
        agent_name = payload["task"].get("agent", "?")
        outcome, prompt = invoke_agent(self, scheduler.run_id, payload, cancelled, deps)
    except AlreadyClaimed:
        # sent twice (its completer was redelivered after sending it): the other Celery task runs it
        return {"task_id": task_id, "success": None, "duplicate": True}
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
        raise self.retry(countdown=min(2 ** self.request.retries, 30), max_retries=TRANSIENT_RETRIES)
    result = TaskResult(task_id=task_id, agent=agent_name, success=outcome.success, output=outcome.output,
                        error=outcome.error, duration_ms=round((time.perf_counter() - t0) * 1000, 1),
                        worker=self.request.hostname, attempts=self.request.retries + 1,
                        started_at=iso(started), completed_at=iso(utcnow()), prompt=prompt)
    every = payload.get("progress_every", 1) if payload else 1
    completion = scheduler.finish(result, send_keys(runtime, run_id, every))
    if completion.progress_target is not None:
        report_phase_progress(self, run_id, completion)
    for tid, celery_id, limit in completion.sends:
        self.add_to_chord(agent_signature(self.app, run_id, tid, limit).set(task_id=celery_id))
    if completion.sends:
        scheduler.sent(task_id)
    return {"task_id": task_id, "success": result.success}


def send_keys(runtime: Runtime, run_id: str, progress_every: int) -> SendKeys:
    """The keys a completion updates for what it dispatches: the run's ledger, limits and progress target."""
    from ..control import RunLedger

    ledger = RunLedger(runtime.redis, runtime.prefix, run_id, runtime.settings.state_ttl_s)
    return SendKeys(ledger=ledger.key, limits=ledger.limits_key, progress=ledger.progress_key,
                    progress_every=progress_every)


def report_phase_progress(task: Any, run_id: str, completion: Completion) -> None:
    """``done/total`` on phase 4's task id, where Flower and the CLI look (every ~1% of the run)."""
    from ..control import RunLedger

    target = RunLedger.parse_target(completion.progress_target)
    if target is not None:
        task.backend.store_result(target[0], {"run_id": run_id, "phase": "PARALLEL_EXECUTION",
                                              "done": completion.finished, "total": target[1]}, "PROGRESS")


def invoke_agent(task: Any, run_id: str, payload: dict, cancelled: bool, deps: dict[str, Any]) -> tuple[Any, str]:
    from ..agents import AgentInvocation, AgentOutcome, build_prompt, run_agent

    spec = TaskSpec.model_validate(payload["task"])
    agent_config = ComponentConfig.model_validate(payload["agent"])
    context = TaskContext.model_validate(payload["context"]) if payload.get("context") else None
    extras = payload.get("request_extras") or {}
    prompt = build_prompt(spec, context, deps, payload["user_prompt"], extras)
    if cancelled:
        return AgentOutcome(success=False, error="cancelled"), prompt
    timeout = float(agent_config.options.get("timeout_s") or payload["timeout_s"])
    invocation = AgentInvocation(task=spec, context=context, dependency_outputs=deps,
                                 user_prompt=payload["user_prompt"], workspace_path=payload["workspace_path"],
                                 run_id=run_id, attempt=task.request.retries + 1, timeout_s=timeout,
                                 prompt=prompt, request_extras=extras)
    agent = cached_agent(spec.agent, json.dumps(payload["agent"], sort_keys=True))
    return run_agent(agent, invocation), prompt


@functools.lru_cache(maxsize=256)
def cached_agent(name: str, config_json: str) -> Any:
    """One agent instance per (name, configuration) per worker process: options are validated once,
    and clients an agent holds (HTTP connections) are reused across its tasks."""
    from ..agents import AGENTS

    config = ComponentConfig.model_validate_json(config_json)
    return AGENTS.get(config.kind)(name, config)


def finish_execution(runtime: Runtime, scheduler: DagScheduler) -> dict:
    """Build phase 4's result from the scheduler's records and close the run."""
    state = scheduler.state()
    if state is None:
        raise LookupError(f"run {scheduler.run_id}: phase 4 state expired before collection")
    if runtime.cancelled(state.run_id):
        state.status = "cancelled"
    state.task_results = collect_results(state, scheduler.results())
    started = scheduler.started()
    result = execution_result(state, state.task_results, started)
    result.started_at = iso(utcnow().fromtimestamp(started, tz=utcnow().tzinfo)) if started else None
    result.completed_at = iso(utcnow())
    check_threshold(result, DispatchConfig.model_validate(state.settings))
    state.record(result)
    if state.status != "cancelled":
        state.status = "succeeded" if result.success else "failed"
    runtime.store.save(state)
    scheduler.reset()
    return state.model_dump(mode="json")


@shared_task(bind=True, name="dispatch.collect")
def collect_task(self: Any, _header: Any, run_id: str) -> dict:
    runtime, scheduler = scheduler_for(self, run_id)
    return finish_execution(runtime, scheduler)
