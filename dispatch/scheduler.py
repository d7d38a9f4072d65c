"""Dependency-driven scheduling of phase 4 across workers, coordinated in Redis.

Why not a static canvas: a level-by-level chain of chords makes a fast branch
wait for a slow unrelated one.  Instead each task is dispatched the moment its
own dependencies have succeeded and a slot is free.  The bookkeeping lives in
Redis (the result backend's server, real or embedded) and every transition is
one Lua script, so any number of workers can complete tasks concurrently and a
completion costs one round trip:

- ``remaining``: hash task_id -> unfinished dependencies; the completion that
  takes it to 0 makes the task ready, exactly once;
- ``ready``: sorted set of tasks waiting for a slot, longest remaining path
  first (HLFET), ties in input order;
- ``inflight``: counter capped at ``max_workers`` (the run's cluster-wide limit);
- ``results``: hash task_id -> TaskResult JSON, written with HSETNX so a
  redelivered task (worker killed after finishing) never schedules twice;
- ``depends``: hash task_id -> its dependencies, so a starting task reads its
  payload and its dependencies' outputs in one script (``prepare``);
- ``claims``: hash task_id -> the Celery id that runs it, so a task sent twice
  (a redelivered completer re-sending what it may not have sent) runs its agent once.

A dependent hop costs what Celery's own does plus two scripts: ``finish`` on
the completer (which also names the tasks it takes and records them in the
run's ledger) and ``prepare`` on the started task.

A failed task never releases its dependents: they stay unscheduled and the
collect step reports them ``skipped`` with the reason.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

from .models import PhaseState, TaskResult
from .planning import bottom_levels

# KEYS: ready, inflight, limit.  Pops the best ready tasks while slots are free.
TAKE_READY = """
local limit = tonumber(redis.call('GET', KEYS[3]) or '1')
local taken = {}
while tonumber(redis.call('GET', KEYS[2]) or '0') < limit do
  local best = redis.call('ZPOPMIN', KEYS[1])
  if #best == 0 then break end
  redis.call('INCR', KEYS[2])
  table.insert(taken, best[1])
end
return taken
"""

# KEYS: 1 results, 2 dependents, 3 remaining, 4 priority, 5 ready, 6 inflight, 7 limit, 8 outbox,
#       9 ledger, 10 limits, 11 progress, 12 progress gate
# ARGV: 1 task_id, 2 result_json, 3 succeeded ("1"/"0"), 4 ttl_s, 5 progress_every (0: never),
#       6 id stem ("": the caller names and records what it sends itself), 7 progress gate ms
# Returns {finished count, progress target or nil, then per task to dispatch: task id, Celery id, time limit},
# or {} for a duplicate completion.  With an id stem, the bookkeeping of sending happens here, in the
# same round trip: each task to dispatch gets a Celery id (stem + counter) and goes into the run's ledger
# (so cancel can revoke it), with its time limit.  (The chord's size is not counted here but by
# add_to_chord right before each send: a completer that died in between must not leave it counted.)
# The ids to dispatch also go to the outbox until the completer confirms it sent them (``sent``), so a
# redelivered completer whose worker died in between can send them after all (``unsent``).
COMPLETE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return {} end
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[3] == '1' then
  local children = redis.call('HGET', KEYS[2], ARGV[1])
  if children then
    for child in string.gmatch(children, '[^\\n]+') do
      if redis.call('HINCRBY', KEYS[3], child, -1) == 0 then
        redis.call('ZADD', KEYS[5], redis.call('HGET', KEYS[4], child), child)
        redis.call('EXPIRE', KEYS[5], ARGV[4])  -- the set may have emptied (and gone) since start
      end
    end
  end
end
redis.call('DECR', KEYS[6])
""" + TAKE_READY.replace("KEYS[1]", "KEYS[5]").replace("KEYS[2]", "KEYS[6]").replace("KEYS[3]", "KEYS[7]") \
    .replace("return taken", """local finished = redis.call('HLEN', KEYS[1])
local reply = {finished, false}
local every = tonumber(ARGV[5])
if every > 0 and finished % every == 0 and redis.call('SET', KEYS[12], '1', 'NX', 'PX', ARGV[7]) then
  reply[2] = redis.call('GET', KEYS[11])
end
if #taken > 0 then
  redis.call('HSET', KEYS[8], ARGV[1], table.concat(taken, '\\n'))
  redis.call('EXPIRE', KEYS[8], ARGV[4])
  for i, child in ipairs(taken) do
    local celery_id = ''
    if ARGV[6] ~= '' then
      celery_id = ARGV[6] .. string.format('%06x', i)
      redis.call('HSET', KEYS[9], celery_id, 'agent:' .. child)
    end
    table.insert(reply, child)
    table.insert(reply, celery_id)
    table.insert(reply, redis.call('HGET', KEYS[10], child) or '')
  end
  if ARGV[6] ~= '' then redis.call('EXPIRE', KEYS[9], ARGV[4]) end
end
return reply""")

# KEYS: payloads, cancel flag, depends, results, claims.  ARGV: task_id, Celery id ("": no claim), ttl_s.
# Returns {payload or nil, cancelled (0/1), then per dependency: its id, its result or nil}, or
# {nil, -1} when another Celery task already claimed this task: a second send of it (a redelivered
# completer re-sends what it may not have sent), which must not run the agent again.  A retry or a
# redelivery of the claimant itself keeps its Celery id, so it passes.
PREPARE = """
if ARGV[2] ~= '' then
  if redis.call('HSETNX', KEYS[5], ARGV[1], ARGV[2]) == 1 then
    redis.call('EXPIRE', KEYS[5], ARGV[3])
  elseif redis.call('HGET', KEYS[5], ARGV[1]) ~= ARGV[2] then
    return {false, -1}
  end
end
local reply = {redis.call('HGET', KEYS[1], ARGV[1]), redis.call('EXISTS', KEYS[2])}
local deps = redis.call('HGET', KEYS[3], ARGV[1])
if deps then
  for dep in string.gmatch(deps, '[^\\n]+') do
    table.insert(reply, dep)
    table.insert(reply, redis.call('HGET', KEYS[4], dep))
  end
end
return reply
"""


@dataclass(frozen=True)
class SendKeys:
    """Where a completion records the tasks it dispatches, so the same script does it.

    ``ledger``: Celery id -> ``agent:<task_id>`` (what cancel revokes); ``limits``:
    task id -> its time limit; ``progress``: phase 4's progress target, returned
    every ``progress_every`` completions but at most once per ``progress_gap_ms``
    (each report is a result write).
    """

    ledger: str
    limits: str
    progress: str
    progress_every: int = 1
    progress_gap_ms: int = 250


@dataclass
class Completion:
    """What recording one finished task decided."""

    finished: Optional[int] = None  # tasks of the run finished so far; None for a duplicate completion
    progress_target: Any = None     # the raw progress target when this completion should report progress
    sends: list[tuple[str, str, Optional[float]]] = field(default_factory=list)  # (task id, Celery id, limit)

    @property
    def task_ids(self) -> list[str]:
        return [tid for tid, _, _ in self.sends]


class Prepared(NamedTuple):
    payload: dict
    cancelled: bool
    dependency_outputs: dict[str, Any]


class AlreadyClaimed(Exception):
    """Another Celery task runs (or ran) this task: this one is a second send of it."""


def dag_prefix(key_prefix: str, run_id: str) -> str:
    return f"{key_prefix}:dag:{run_id}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


class DagScheduler:
    """The run's scheduling state; no Celery here, only a Redis client."""

    def __init__(self, client: Any, key_prefix: str, run_id: str, ttl_s: int = 7 * 24 * 3600) -> None:
        self.client = client
        self.run_id = run_id
        self.ttl_s = max(1, int(ttl_s))
        base = dag_prefix(key_prefix, run_id)
        names = ("remaining", "ready", "inflight", "results", "payloads", "dependents", "depends", "priority",
                 "outbox", "claims", "state", "limit", "started", "reported")
        self.keys = {name: f"{base}:{name}" for name in names}
        self._complete = client.register_script(COMPLETE)
        self._prepare = client.register_script(PREPARE)
        self._take_ready = client.register_script(TAKE_READY)
        self.finished: Optional[int] = None

    def key(self, name: str) -> str:
        return self.keys[name]

    # ------------------------------------------------------------------ start
    def start(self, state: PhaseState, payloads: dict[str, dict], started: float,
              finished: Optional[dict[str, TaskResult]] = None) -> list[str]:
        """Store the run, seed the ready set with root tasks, return those to dispatch now.

        ``finished``: results kept from an earlier attempt of this phase (``dispatch
        resume``); those tasks are not run again and count as done for their dependents.
        """
        self.reset()
        finished = finished or {}
        tasks = state.tasks_data
        k = self.key
        levels = bottom_levels(tasks)
        # lower score pops first: longest remaining path first, then input order
        scores = {t.task_id: round(-levels[t.task_id], 3) + i * 1e-7 for i, t in enumerate(tasks)}
        children: dict[str, list[str]] = {t.task_id: [] for t in tasks}
        for t in tasks:
            for dep in dict.fromkeys(t.dependencies):
                children[dep].append(t.task_id)
        pipe = self.client.pipeline()
        pipe.set(k("started"), repr(started))
        pipe.set(k("state"), state.model_dump_json())
        pipe.set(k("limit"), max(1, state.run_config.max_workers))
        pipe.set(k("inflight"), 0)
        if payloads:
            pipe.hset(k("payloads"), mapping={tid: json.dumps(p) for tid, p in payloads.items()})
        if tasks:
            remaining = {t.task_id: len(set(t.dependencies) - set(finished)) for t in tasks}
            pipe.hset(k("remaining"), mapping=remaining)
            pipe.hset(k("dependents"), mapping={tid: "\n".join(ch) for tid, ch in children.items()})
            depends = {t.task_id: "\n".join(dict.fromkeys(t.dependencies)) for t in tasks if t.dependencies}
            if depends:
                pipe.hset(k("depends"), mapping=depends)
            pipe.hset(k("priority"), mapping={tid: repr(score) for tid, score in scores.items()})
            if finished:
                pipe.hset(k("results"), mapping={tid: r.model_dump_json() for tid, r in finished.items()})
            roots = {t.task_id: scores[t.task_id] for t in tasks
                     if not remaining[t.task_id] and t.task_id not in finished}
            if roots:
                pipe.zadd(k("ready"), roots)
        for key in self.keys.values():
            pipe.expire(key, self.ttl_s)
        pipe.execute()
        return self.take_ready()

    # --------------------------------------------------------------- per task
    def prepare(self, task_id: str, cancel_key: Optional[str] = None, celery_id: str = "") -> Prepared:
        """The task's payload, whether its run was cancelled and its dependencies' outputs: one round trip.

        With ``celery_id``, the task is also claimed for that Celery task; ``AlreadyClaimed``
        when a different one holds it.
        """
        k = self.key
        reply = self._prepare(keys=[k("payloads"), cancel_key or f"{k('state')}:no-cancel-key", k("depends"),
                                    k("results"), k("claims")], args=[task_id, celery_id, self.ttl_s])
        if reply[1] == -1:
            raise AlreadyClaimed(f"run {self.run_id}: task '{task_id}' is claimed by another Celery task")
        if reply[0] is None:
            raise LookupError(f"run {self.run_id}: no payload for task '{task_id}' (expired or cancelled)")
        deps = {_text(dep): json.loads(raw).get("output") for dep, raw in zip(reply[2::2], reply[3::2])
                if raw is not None}
        return Prepared(json.loads(reply[0]), bool(reply[1]), deps)

    def complete(self, result: TaskResult) -> list[str]:
        """Record a finished task once; return the tasks that may start now (see ``finish``)."""
        return self.finish(result).task_ids

    def finish(self, result: TaskResult, send: Optional[SendKeys] = None) -> Completion:
        """Record a finished task once and take the tasks that may start now, in one round trip.

        With ``send``, the taken tasks also get their Celery ids, ledger entries
        and time limits here, so the caller only adds them to the chord and publishes them.
        ``finished`` then holds how many tasks of the run have finished (None
        after a duplicate), so progress needs no extra round trip.
        """
        k = self.key
        unused = f"{self.key('state')}:unused"  # never written: the script touches keys 9-11 only with ``send``
        extra = [send.ledger, send.limits, send.progress] if send else [unused] * 3
        reply = self._complete(
            keys=[k("results"), k("dependents"), k("remaining"), k("priority"), k("ready"), k("inflight"),
                  k("limit"), k("outbox"), *extra, k("reported")],
            args=[result.task_id, result.model_dump_json(), "1" if result.success else "0", self.ttl_s,
                  max(0, send.progress_every) if send else 0, str(uuid.uuid4())[:-6] if send else "",
                  max(1, send.progress_gap_ms) if send else 1])
        if not reply:
            self.finished = None
            return Completion()
        self.finished = int(reply[0])
        sends = [(_text(tid), _text(cid), float(limit) if limit else None)
                 for tid, cid, limit in zip(reply[2::3], reply[3::3], reply[4::3])]
        return Completion(self.finished, reply[1], sends)

    def sent(self, task_id: str) -> None:
        """The tasks ``task_id``'s completion unblocked have been sent: clear its outbox entry."""
        self.client.hdel(self.key("outbox"), task_id)

    def unsent(self, task_id: str) -> list[str]:
        """Tasks ``task_id``'s completion took a slot for but may not have sent (its worker died)."""
        raw = self.client.hget(self.key("outbox"), task_id)
        return [t for t in _text(raw).split("\n") if t] if raw else []

    def take_ready(self) -> list[str]:
        taken = self._take_ready(keys=[self.key("ready"), self.key("inflight"), self.key("limit")])
        return [_text(t) for t in taken]

    # ---------------------------------------------------------------- collect
    def state(self) -> Optional[PhaseState]:
        raw = self.client.get(self.key("state"))
        return PhaseState.model_validate_json(raw) if raw else None

    def started(self) -> float:
        return float(self.client.get(self.key("started")) or 0.0)

    def results(self) -> dict[str, TaskResult]:
        return {_text(k): TaskResult.model_validate_json(v)
                for k, v in self.client.hgetall(self.key("results")).items()}

    def finished_count(self) -> int:
        return int(self.client.hlen(self.key("results")))

    def reset(self) -> None:
        self.client.delete(*self.keys.values())
