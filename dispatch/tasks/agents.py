"""The agent task (one per input task, on the agents queue) and the collect step.

Messages carry only ``(run_id, task_id)``: the task, its context and its agent
configuration wait in Redis, so nothing secret or bulky travels through the
broker or shows up in Flower.
"""
from __future__ import annotations

import time
from typing import Any

from celery import shared_task

from ..celery_app import AGENT_QUEUE
from ..config import ComponentConfig, DispatchConfig
from ..models import PhaseState, TaskContext, TaskResult, TaskSpec, iso, utcnow
from ..phases import collect_results, execution_result
from ..runtime import Runtime
from ..scheduler import DagScheduler

TRANSIENT_RETRIES = 3


def task_payloads(state: PhaseState) -> dict[str, dict]:
    """Everything one agent task needs, resolved once at fan-out time."""
    from ..agents import resolve_agent

    config = DispatchConfig.model_validate(state.settings)
    shared = {"user_prompt": state.user_prompt, "workspace_path": state.workspace_path,
              "timeout_s": state.run_config.timeout_seconds}
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


def agent_signature(app: Any, run_id: str, task_id: str) -> Any:
    return app.signature("dispatch.agent", args=(run_id, task_id), queue=AGENT_QUEUE)


def scheduler_for(task: Any, run_id: str) -> tuple[Runtime, DagScheduler]:
    runtime = Runtime.for_app(task.app)
    return runtime, DagScheduler(runtime.redis, runtime.prefix, run_id, runtime.settings.state_ttl_s)


@shared_task(bind=True, name="dispatch.agent", acks_late=True, reject_on_worker_lost=True)
def agent_task(self: Any, run_id: str, task_id: str) -> dict:
    """Run one task on its agent, record the result, dispatch whatever it unblocks.

    Never raises (but for a transient retry): an exception here would break the
    chord, so every failure becomes a failed ``TaskResult``.
    """
    from ..agents import AgentOutcome

    runtime, scheduler = scheduler_for(self, run_id)
    started, t0 = utcnow(), time.perf_counter()
    agent_name, prompt = "?", None
    try:
        payload, cancelled = scheduler.prepare(task_id, runtime.cancel_key(run_id))
        agent_name = payload["task"].get("agent", "?")
        outcome, prompt = invoke_agent(self, scheduler, payload, cancelled)
    except Exception as exc:  # noqa: BLE001 - recorded as the task's failure
        outcome = AgentOutcome(success=False, error=f"{type(exc).__name__}: {exc}")
    if not outcome.success and outcome.transient and self.request.retries < TRANSIENT_RETRIES:
        raise self.retry(countdown=min(2 ** self.request.retries, 30), max_retries=TRANSIENT_RETRIES)
    result = TaskResult(task_id=task_id, agent=agent_name, success=outcome.success, output=outcome.output,
                        error=outcome.error, duration_ms=round((time.perf_counter() - t0) * 1000, 1),
                        worker=self.request.hostname, attempts=self.request.retries + 1,
                        started_at=iso(started), completed_at=iso(utcnow()), prompt=prompt)
    for next_id in scheduler.complete(result):
        self.add_to_chord(agent_signature(self.app, run_id, next_id))
    return {"task_id": task_id, "success": result.success}


def invoke_agent(task: Any, scheduler: DagScheduler, payload: dict, cancelled: bool) -> tuple[Any, str]:
    from ..agents import AGENTS, AgentInvocation, AgentOutcome, build_prompt, run_agent

    spec = TaskSpec.model_validate(payload["task"])
    agent_config = ComponentConfig.model_validate(payload["agent"])
    context = TaskContext.model_validate(payload["context"]) if payload.get("context") else None
    deps = scheduler.dependency_outputs(spec.dependencies)
    prompt = build_prompt(spec, context, deps, payload["user_prompt"])
    if cancelled:
        return AgentOutcome(success=False, error="cancelled"), prompt
    timeout = float(agent_config.options.get("timeout_s") or payload["timeout_s"])
    invocation = AgentInvocation(task=spec, context=context, dependency_outputs=deps,
                                 user_prompt=payload["user_prompt"], workspace_path=payload["workspace_path"],
                                 run_id=scheduler.run_id, attempt=task.request.retries + 1, timeout_s=timeout,
                                 prompt=prompt)
    agent = AGENTS.get(agent_config.kind)(spec.agent, agent_config)
    return run_agent(agent, invocation), prompt


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
