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
  (a redelivered completer re-sending what it may not have sent) runs its agent once;
- ``finished``: list of task ids in the order they finished, so a follower
  (``--results-file``) reads only what is new at each poll.

A dependent hop costs what Celery's own does plus two scripts: ``finish`` on
the completer (which also names the tasks it takes and records them in the
run's ledger) and ``prepare`` on the started task.

A failed task never releases its dependents: they stay unscheduled and the
collect step reports them ``skipped`` with the reason.

With a budget (``dispatch.pipeline.spend``), ``prepare`` also reserves the
starting task's estimate against the run's caps and ``finish`` replaces the
reservation by what the task spent, both in the same scripts, so workers
starting at once overshoot a cap by at most their reservations.  A task that
would pass a cap does not start (``OverBudget``), the run's ``paused`` key
names the cap, and no further task is taken: phase 4 closes when the running
ones finish.
"""
from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Optional

from importlib.resources import files

from pydantic import BaseModel

from dispatch.common.spend import to_nano
from dispatch.models import PhaseState, StateRef, TaskResult
from dispatch.pipeline.spend import budget_plan, spent_before
from dispatch.planning.graph import bottom_levels
from dispatch.store.keys import Keys

SCRIPTS = files("dispatch.store") / "lua"
# The most tasks one transition takes and sends: phase 4's start (its chord's header) or one completion.
# A run of 100k roots with max_workers 100k starts with this many; each completion then takes up to as
# many more while slots are free, so no worker ever builds (and freezes) one signature per task of the run.
TAKE_MAX = 1000
WRITE_CHUNK = 2000  # per-task hash entries per round trip at the start
CLOSE_LEASE_S = 30  # a closer holds phase 4's close this long at a time, renewed while it works


@functools.lru_cache(maxsize=None)  # read once per process: a scheduler is built per agent task
def script(name: str) -> str:
    """A Lua script of ``lua/`` (each file says its KEYS, ARGV and reply)."""
    return (SCRIPTS / f"{name}.lua").read_text(encoding="utf-8")


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
    spent_cost: float = 0.0  # dollars phase 4 has counted so far (with what was spent before it)
    spent_tokens: int = 0
    progress_target: Any = None     # the raw progress target when this completion should report progress
    sends: list[tuple[str, str, Optional[float]]] = field(default_factory=list)  # (task id, Celery id, limit)

    @property
    def task_ids(self) -> list[str]:
        return [tid for tid, _, _ in self.sends]


class Prepared(NamedTuple):
    payload: str  # the payload's JSON, as stored (the agent task reads it as an ``AgentPayload``)
    cancelled: bool
    dependency_outputs: dict[str, Any]
    dependency_commits: dict[str, str] = {}  # dependency -> the commit of its change (git workspaces)


class Records(NamedTuple):
    """What closing phase 4 from outside its chord reads of the scheduler, from one moment (``records``)."""

    ref: Optional[StateRef]  # the run's state in the store; None: phase 4 is not under way (never started, or
    # closed and retired)
    results: dict[str, TaskResult]
    started: float
    paused: Optional[str]
    claimed: list[str]  # the tasks an agent task has started on (``prepare``'s claims)


class AlreadyClaimed(Exception):
    """Another Celery task runs (or ran) this task: this one is a second send of it."""


class OverBudget(Exception):
    """The task would pass one of the run's caps: it does not start, and the run pauses."""

    def __init__(self, cap: str, agent: str = "") -> None:
        super().__init__(cap)
        self.cap, self.agent = cap, agent  # the task's agent (its payload is not read: it does not start)


class NoSuchRun(Exception):
    """An agent message for a run that has no phase 4 under way in this deployment: ignored, nothing written."""


START = "__start__"  # the outbox entry of phase 4's own first sends


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


class DagScheduler:
    """The run's scheduling state; no Celery here, only a Redis client."""

    def __init__(self, client: Any, key_prefix: str, run_id: str, ttl_s: int = 7 * 24 * 3600) -> None:
        self.client = client
        self.run_id = run_id
        self.ttl_s = max(1, int(ttl_s))
        self.keys = Keys(key_prefix).dag(run_id)
        self._complete = client.register_script(script("complete"))
        self._prepare = client.register_script(script("prepare"))
        self._take_ready = client.register_script(script("take_ready"))
        self.finished: Optional[int] = None

    def key(self, name: str) -> str:
        return self.keys[name]

    # ------------------------------------------------------------------ start
    def start(self, state: PhaseState, payloads: Mapping[str, BaseModel | dict] | Iterable[tuple[str, Any]],
              started: float, finished: Optional[dict[str, TaskResult]] = None) -> list[str]:
        """Store the run, seed the ready set with root tasks, return those to dispatch now (at most
        ``TAKE_MAX``: the first completions take the rest while slots are free).

        ``payloads``: task id -> payload, or an iterable of those pairs, read once and written
        ``WRITE_CHUNK`` at a time (a 100k-task run never holds every payload's JSON, nor one command
        carrying them all).  ``finished``: results kept from an earlier attempt of this phase
        (``dispatch resume``); those tasks are not run again and count as done for their dependents.
        """
        self.reset()
        finished = finished or {}
        tasks = state.tasks_data
        k = self.key
        pairs = payloads.items() if isinstance(payloads, Mapping) else payloads
        self.write_chunks(k("payloads"), ((tid, p.model_dump_json() if isinstance(p, BaseModel) else json.dumps(p))
                                          for tid, p in pairs))
        levels = bottom_levels(tasks)
        # lower score pops first: longest remaining path first, then input order
        scores = {t.task_id: round(-levels[t.task_id], 3) + i * 1e-7 for i, t in enumerate(tasks)}
        del levels
        children: dict[str, list[str]] = {t.task_id: [] for t in tasks}
        for t in tasks:
            for dep in dict.fromkeys(t.dependencies):
                children[dep].append(t.task_id)
        done = set(finished)
        remaining = {t.task_id: len(set(t.dependencies) - done) for t in tasks}
        self.write_chunks(k("remaining"), remaining.items())
        self.write_chunks(k("dependents"), ((tid, "\n".join(ch)) for tid, ch in children.items()))
        del children
        self.write_chunks(k("depends"), ((t.task_id, "\n".join(dict.fromkeys(t.dependencies)))
                                         for t in tasks if t.dependencies))
        self.write_chunks(k("priority"), ((tid, repr(score)) for tid, score in scores.items()))
        if finished:
            self.write_chunks(k("results"), ((tid, r.model_dump_json()) for tid, r in finished.items()))
        roots = ((t.task_id, scores[t.task_id]) for t in tasks if not remaining[t.task_id] and t.task_id not in done)
        self.write_chunks(k("ready"), roots, zadd=True)
        del scores, remaining
        pipe = self.client.pipeline()
        pipe.set(k("started"), repr(started))
        # a reference, not the state: the close reads the run from the store, lean (a copy of a 100k-task
        # state here cost a worker seconds to write and to parse back, and its whole size in memory)
        pipe.set(k("state"), state.ref().model_dump_json())
        pipe.set(k("limit"), max(1, state.run_config.max_workers))
        pipe.set(k("inflight"), 0)
        spent = spent_before(state, finished)  # counted on from here: progress shows the run's spend so far
        pipe.hset(k("spent"), mapping={"cost": to_nano(spent.cost_usd), "tokens": spent.total_tokens})
        plan = budget_plan(state, finished)
        if plan is not None:
            pipe.hset(k("budget"), mapping=plan.hash())
            if plan.agent_spend:
                pipe.hset(k("agent_spend"), mapping=plan.agent_spend)
            if plan.estimates:
                pipe.hset(k("estimates"), mapping={tid: f"{agent}\t{'' if own is None else own}"
                                                    for tid, (agent, own) in plan.estimates.items()})
            cap = plan.passed(time.time())
            if cap:  # the quorum (or an earlier attempt) already spent it: nothing starts
                pipe.set(k("paused"), cap)
        for key in self.keys.values():
            pipe.expire(key, self.ttl_s)
        pipe.execute()
        first = self.take_ready()
        if first:  # phase 4's own sends, kept like a completion's: a redelivered phase 4 re-sends them
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(k("outbox"), START, "\n".join(first))
            pipe.expire(k("outbox"), self.ttl_s)
            pipe.execute()
        return first

    def write_chunks(self, key: str, items: Iterable[tuple[str, Any]], zadd: bool = False) -> None:
        """``items`` into the hash ``key`` (or, ``zadd``, the sorted set: member, score), ``WRITE_CHUNK`` at a
        time, one round trip each, holding one chunk's values at most.  Before the run's keys get their
        expiry (``start`` sets it on every key once all is written)."""
        chunk: dict[str, Any] = {}
        for name, value in items:
            chunk[name] = value
            if len(chunk) >= WRITE_CHUNK:
                self._write(key, chunk, zadd)
                chunk = {}
        if chunk:
            self._write(key, chunk, zadd)

    def _write(self, key: str, chunk: dict[str, Any], zadd: bool) -> None:
        if zadd:
            self.client.zadd(key, chunk)
        else:
            self.client.hset(key, mapping=chunk)

    # --------------------------------------------------------------- per task
    def prepare(self, task_id: str, cancel_key: Optional[str] = None, celery_id: str = "") -> Prepared:
        """The task's payload, whether its run was cancelled and its dependencies' outputs: one round trip.

        With ``celery_id``, the task is also claimed for that Celery task; ``AlreadyClaimed``
        when a different one holds it.
        """
        k = self.key
        reply = self._prepare(keys=[k("payloads"), cancel_key or f"{k('state')}:no-cancel-key", k("depends"),
                                    k("results"), k("claims"), k("budget"), k("spent"), k("reserved"),
                                    k("estimates"), k("agent_spend"), k("paused")],
                              args=[task_id, celery_id, self.ttl_s, repr(time.time())])
        if reply[1] == -3:
            raise OverBudget(_text(reply[2]), _text(reply[3]) if len(reply) > 3 and reply[3] else "")
        if reply[1] == -1:
            raise AlreadyClaimed(f"run {self.run_id}: task '{task_id}' is claimed by another Celery task")
        if reply[1] == -2:
            raise NoSuchRun(f"run {self.run_id}: no phase 4 under way (unknown run, or already closed)")
        if reply[0] is None:
            raise LookupError(f"run {self.run_id}: no payload for task '{task_id}' (expired or cancelled)")
        deps, commits = {}, {}
        for dep, raw in zip(reply[2::2], reply[3::2]):
            if raw is not None:
                result = json.loads(raw)
                deps[_text(dep)] = result.get("output")
                if (result.get("changes") or {}).get("commit"):
                    commits[_text(dep)] = result["changes"]["commit"]
        return Prepared(_text(reply[0]), bool(reply[1]), deps, commits)

    def finish(self, result: TaskResult, send: Optional[SendKeys] = None) -> Completion:
        """Record a finished task once and take the tasks that may start now, in one round trip.

        With ``send``, the taken tasks also get their Celery ids, ledger entries
        and time limits here, so the caller only adds them to the chord and publishes them.
        ``finished`` then holds how many tasks of the run have finished (None
        after a duplicate), so progress needs no extra round trip.
        """
        k = self.key
        usage = result.usage
        unused = f"{self.key('state')}:unused"  # never written: the script touches keys 9-11 only with ``send``
        extra = [send.ledger, send.limits, send.progress] if send else [unused] * 3
        reply = self._complete(
            keys=[k("results"), k("dependents"), k("remaining"), k("priority"), k("ready"), k("inflight"),
                  k("limit"), k("outbox"), *extra, k("reported"), k("finished"),
                  k("budget"), k("spent"), k("reserved"), k("agent_spend"), k("paused")],
            args=[result.task_id, result.model_dump_json(), "1" if result.success else "0", self.ttl_s,
                  max(0, send.progress_every) if send else 0, f"{self.run_id}-{uuid.uuid4().hex[:20]}-" if send else "",
                  max(1, send.progress_gap_ms) if send else 1, result.agent,
                  to_nano(usage.cost_usd) if usage else 0, usage.total_tokens if usage else 0,
                  "0" if result.not_run else "1", repr(time.time()), TAKE_MAX])
        if not reply:
            self.finished = None
            return Completion()
        self.finished = int(reply[0])
        sends = [(_text(tid), _text(cid), float(limit) if limit else None)
                 for tid, cid, limit in zip(reply[4::3], reply[5::3], reply[6::3])]
        return Completion(self.finished, progress_target=reply[1], sends=sends,
                          spent_cost=int(reply[2]) / 1e9, spent_tokens=int(reply[3]))

    def sent(self, task_id: str) -> None:
        """The tasks ``task_id``'s completion unblocked have been sent: clear its outbox entry."""
        self.client.hdel(self.key("outbox"), task_id)

    def unsent(self, task_id: str) -> list[str]:
        """Tasks ``task_id``'s completion took a slot for but may not have sent (its worker died)."""
        raw = self.client.hget(self.key("outbox"), task_id)
        return [t for t in _text(raw).split("\n") if t] if raw else []

    def take_ready(self) -> list[str]:
        taken = self._take_ready(keys=[self.key("ready"), self.key("inflight"), self.key("limit"),
                                       self.key("paused")], args=[TAKE_MAX])
        return [_text(t) for t in taken]

    # ---------------------------------------------------------------- collect
    def state_ref(self) -> Optional[StateRef]:
        """The run's state as phase 4 started it (in the store), or None: phase 4 is not under way."""
        raw = self.client.get(self.key("state"))
        return StateRef.model_validate_json(raw) if raw else None

    def records(self) -> Records:
        """The state's reference, results, start, pause and claims in one MULTI: a close racing another
        closer's ``retire`` (the embedded executor's own close, a chord's collect step) sees all of them or
        none, never a state whose results were already dropped (its finished tasks would be reported as
        never run)."""
        k = self.key
        pipe = self.client.pipeline(transaction=True)
        for command, name in (("get", "state"), ("hgetall", "results"), ("get", "started"), ("get", "paused"),
                              ("hkeys", "claims")):
            getattr(pipe, command)(k(name))
        raw, results, started, paused, claims = pipe.execute()
        if not raw:
            return Records(None, {}, 0.0, None, [])
        return Records(StateRef.model_validate_json(raw),
                       {_text(tid): TaskResult.model_validate_json(v) for tid, v in results.items()},
                       float(started or 0.0), _text(paused) if paused else None, [_text(c) for c in claims])

    def started(self) -> float:
        return float(self.client.get(self.key("started")) or 0.0)

    def results(self) -> dict[str, TaskResult]:
        return {_text(k): TaskResult.model_validate_json(v)
                for k, v in self.client.hgetall(self.key("results")).items()}

    def results_since(self, cursor: int) -> list[tuple[str, str]]:
        """``(task_id, result JSON)`` of the tasks finished after the first ``cursor`` (in finishing order,
        from ``finished``): a follower reads each result once, however long the run."""
        ids = [_text(t) for t in self.client.lrange(self.key("finished"), cursor, -1)]
        raws = self.client.hmget(self.key("results"), ids) if ids else []
        return [(tid, _text(raw)) for tid, raw in zip(ids, raws) if raw is not None]

    def exists(self) -> bool:
        """Phase 4 of this run is under way (started and not yet closed)."""
        return bool(self.client.exists(self.key("state")))

    def started_tasks(self) -> list[str]:
        """The tasks phase 4 itself sent when it started (``start``)."""
        return self.unsent(START)

    def quiet(self) -> bool:
        """Nothing is running and nothing is waiting (or what waits cannot start: the run paused at a cap)."""
        inflight = int(self.client.get(self.key("inflight")) or 0)
        return inflight <= 0 and (not self.client.zcard(self.key("ready")) or self.paused() is not None)

    def paused(self) -> Optional[str]:
        """The cap (``max_cost_usd``, ``max_tokens``, ``max_wall_s``) that stopped new tasks, or None."""
        raw = self.client.get(self.key("paused"))
        return _text(raw) if raw else None

    def claim_close(self) -> bool:
        """The one caller allowed to close phase 4 now (several chords may end over one scheduler): a lease
        of ``CLOSE_LEASE_S``, renewed while the close runs (``holding_close``), so a closer whose worker
        died frees the close within the lease; before, its claim held the close for the run's TTL, until
        the stall watchdog released it two minutes later."""
        return bool(self.client.set(self.key("closed"), "1", nx=True, ex=CLOSE_LEASE_S))

    @contextmanager
    def holding_close(self) -> Iterator[None]:
        """The close's lease renewed every third of it while the block runs (a large run's close, or a git
        integration, can outlast one lease); stopped, and its renewer joined, when the block ends."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(CLOSE_LEASE_S / 3):
                try:
                    self.client.expire(self.key("closed"), CLOSE_LEASE_S)
                except Exception:  # noqa: BLE001 - the next renewal tries again; a lapsed lease lets another close
                    pass

        renewer = threading.Thread(target=renew, daemon=True, name=f"dispatch-close-lease-{self.run_id}")
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()

    def reset(self, keep_closed: bool = False) -> None:
        """Drop the run's scheduling keys; the closer keeps ``closed`` so a late chord cannot close again."""
        self.client.delete(*(key for name, key in self.keys.items() if not (keep_closed and name == "closed")))
