"""Dependency-driven scheduling of phase 4 across workers, coordinated in Redis.

Why not a static canvas: a level-by-level chain of chords makes a fast branch
wait for a slow unrelated one.  Instead each task is dispatched the moment its
own dependencies have succeeded.  The bookkeeping lives in Redis (the result
backend's server, real or embedded), using only atomic single-key commands, so
any number of workers can complete tasks concurrently:

- ``remaining``: hash task_id -> unfinished dependencies (HINCRBY -1; the one
  completer that sees 0 makes the task ready, exactly once);
- ``ready``: list of tasks waiting for a slot;
- ``inflight``: counter capped at ``max_workers`` (the run's cluster-wide limit);
- ``results``: hash task_id -> TaskResult JSON, written with HSETNX so a
  redelivered task (worker killed after finishing) never schedules twice.

A failed task never releases its dependents: they stay unscheduled and the
collect step reports them ``skipped`` with the reason.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from .models import PhaseState, TaskResult


def dag_prefix(key_prefix: str, run_id: str) -> str:
    return f"{key_prefix}:dag:{run_id}"


class DagScheduler:
    """The run's scheduling state; no Celery here, only a Redis client."""

    def __init__(self, client: Any, key_prefix: str, run_id: str, ttl_s: int = 7 * 24 * 3600) -> None:
        self.client = client
        self.run_id = run_id
        self.ttl_s = ttl_s
        base = dag_prefix(key_prefix, run_id)
        self.k_remaining = f"{base}:remaining"
        self.k_ready = f"{base}:ready"
        self.k_inflight = f"{base}:inflight"
        self.k_results = f"{base}:results"
        self.k_payloads = f"{base}:payloads"
        self.k_dependents = f"{base}:dependents"
        self.k_state = f"{base}:state"
        self.k_limit = f"{base}:limit"
        self.k_started = f"{base}:started"

    # ------------------------------------------------------------------ start
    def start(self, state: PhaseState, payloads: dict[str, dict], started: float) -> list[str]:
        """Store the run, seed the ready list with root tasks, return those to dispatch now."""
        self.reset()
        pipe = self.client.pipeline()
        pipe.set(self.k_started, repr(started))
        pipe.set(self.k_state, state.model_dump_json())
        pipe.set(self.k_limit, max(1, state.run_config.max_workers))
        pipe.set(self.k_inflight, 0)
        if payloads:
            pipe.hset(self.k_payloads, mapping={tid: json.dumps(p) for tid, p in payloads.items()})
        deps = {t.task_id: list(dict.fromkeys(t.dependencies)) for t in state.tasks_data}
        dependents: dict[str, list[str]] = {tid: [] for tid in deps}
        for tid, ds in deps.items():
            for d in ds:
                dependents[d].append(tid)
        if deps:
            pipe.hset(self.k_remaining, mapping={tid: len(ds) for tid, ds in deps.items()})
            pipe.hset(self.k_dependents, mapping={tid: json.dumps(ch) for tid, ch in dependents.items()})
        roots = [t.task_id for t in state.tasks_data if not deps[t.task_id]]
        if roots:
            pipe.rpush(self.k_ready, *roots)
        for key in (self.k_started, self.k_state, self.k_limit, self.k_inflight, self.k_payloads, self.k_remaining,
                    self.k_dependents, self.k_ready):
            pipe.expire(key, self.ttl_s)
        pipe.execute()
        return self.take_ready()

    # --------------------------------------------------------------- per task
    def payload(self, task_id: str) -> dict:
        raw = self.client.hget(self.k_payloads, task_id)
        if raw is None:
            raise LookupError(f"run {self.run_id}: no payload for task '{task_id}' (expired or cancelled)")
        return json.loads(raw)

    def dependency_outputs(self, task_ids: list[str]) -> dict[str, Any]:
        if not task_ids:
            return {}
        raws = self.client.hmget(self.k_results, task_ids)
        return {tid: json.loads(raw).get("output") for tid, raw in zip(task_ids, raws) if raw is not None}

    def complete(self, result: TaskResult) -> list[str]:
        """Record a finished task once; return the tasks that may start now."""
        if not self.client.hsetnx(self.k_results, result.task_id, result.model_dump_json()):
            return []  # a redelivered duplicate: the first completion already scheduled what follows
        self.client.expire(self.k_results, self.ttl_s)
        if result.success:
            children = json.loads(self.client.hget(self.k_dependents, result.task_id) or "[]")
            newly_ready = [c for c in children if self.client.hincrby(self.k_remaining, c, -1) == 0]
            if newly_ready:
                self.client.rpush(self.k_ready, *newly_ready)
        self.client.decr(self.k_inflight)
        return self.take_ready()

    def take_ready(self) -> list[str]:
        """Claim slots for waiting tasks.

        Lost-wakeup free: a task is pushed to ``ready`` before its pusher tries
        for a slot, and whoever frees a slot re-checks ``ready`` afterwards.
        """
        limit = int(self.client.get(self.k_limit) or 1)
        taken: list[str] = []
        while self.client.llen(self.k_ready) > 0:
            if self.client.incr(self.k_inflight) > limit:
                self.client.decr(self.k_inflight)
                break
            task_id = self.client.lpop(self.k_ready)
            if task_id is None:
                self.client.decr(self.k_inflight)
                continue
            taken.append(task_id.decode() if isinstance(task_id, bytes) else task_id)
        return taken

    # ---------------------------------------------------------------- collect
    def state(self) -> Optional[PhaseState]:
        raw = self.client.get(self.k_state)
        return PhaseState.model_validate_json(raw) if raw else None

    def started(self) -> float:
        return float(self.client.get(self.k_started) or 0.0)

    def results(self) -> dict[str, TaskResult]:
        return {(k.decode() if isinstance(k, bytes) else k): TaskResult.model_validate_json(v)
                for k, v in self.client.hgetall(self.k_results).items()}

    def finished_count(self) -> int:
        return int(self.client.hlen(self.k_results))

    def reset(self) -> None:
        self.client.delete(self.k_remaining, self.k_ready, self.k_inflight, self.k_results, self.k_payloads,
                           self.k_dependents, self.k_state, self.k_limit, self.k_started)
