"""Phase-4 sends whose broker message was lost, found from the run's records (no Celery here).

Why: a worker killed -9 between taking a message off its queue (BRPOP) and
recording it unacked loses the message for good: no redelivery comes, the task
stays taken (``inflight``) and never claimed, and the run stalls (found by
``bench/chaos.py``).  A send is lost when the run's ledger has its Celery id,
its task has neither a result nor a claim, no completer's outbox still lists it
(that completer's redelivery sends it), and its message is neither queued nor
unacked.  The runtime's watchdog (``dispatch.runtime.watchdog``) sends it again
under its own Celery id and chord, so the chord closes; the claim in ``prepare``
keeps the agent from running twice.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Optional

from dispatch.store.keys import Keys

START = "__start__"  # phase 4's own first sends in the outbox (dispatch.store.scheduler.START)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


def remember_chord(client: Any, keys: Keys, run_id: str, group_id: str, chord: Any, ttl_s: int) -> None:
    """Record a chord of the run's phase 4 (its group id and callback), as an agent task of it starts:
    what a lost send needs to be sent again as a part of that chord."""
    key = keys.dag(run_id)["chords"]
    pipe = client.pipeline(transaction=False)
    pipe.hsetnx(key, group_id, json.dumps(chord))
    pipe.expire(key, max(1, int(ttl_s)))
    pipe.execute()


def chord_context(client: Any, keys: Keys, run_id: str) -> Optional[tuple[str, dict]]:
    """(group id, callback) of the run's phase-4 chord.  A redelivered phase 4 makes a second chord over the
    same scheduler; which one a lost send joins is not recorded, so one of them is taken (either closes the
    phase: its collect step reads the scheduler's records, and the watchdog sends it if a chord stays open)."""
    chords = client.hgetall(keys.dag(run_id)["chords"])
    if not chords:
        return None
    group, chord = min(chords.items())
    return _text(group), json.loads(chord)


def phase_4_runs(client: Any, keys: Keys) -> list[str]:
    """Runs whose phase 4 is under way in this deployment (their scheduler state exists)."""
    head, tail = keys.dag("\x00")["state"].split("\x00")
    return [_text(k)[len(head):-len(tail)] for k in client.scan_iter(match=f"{head}*{tail}", count=1000)]


def progress(client: Any, keys: Keys, run_id: str) -> tuple[int, int]:
    """(tasks finished, tasks claimed) of the run: unchanged between two looks, the run stands still."""
    dag = keys.dag(run_id)
    pipe = client.pipeline(transaction=False)
    pipe.hlen(dag["results"])
    pipe.hlen(dag["claims"])
    finished, claimed = pipe.execute()
    return int(finished), int(claimed)


def unaccounted_sends(client: Any, keys: Keys, run_id: str) -> dict[str, str]:
    """``{celery_id: task_id}`` of agent sends nothing accounts for yet: no result, no claim, no outbox entry."""
    dag = keys.dag(run_id)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.ledger(run_id))
    pipe.hkeys(dag["results"])
    pipe.hkeys(dag["claims"])
    pipe.hgetall(dag["outbox"])
    pipe.exists(dag["paused"])
    ledger, results, claims, outbox, paused = pipe.execute()
    if paused:  # a run paused at a budget cap holds its tasks on purpose
        return {}
    done = {_text(t) for t in results} | {_text(t) for t in claims}
    unsent = {t for name, raw in outbox.items() if _text(name) != START for t in _text(raw).split("\n") if t}
    sends = {}
    for cid, label in ledger.items():
        label = _text(label)
        if label.startswith("agent:"):
            task_id = label.split(":", 1)[1]
            if task_id not in done and task_id not in unsent:
                sends[_text(cid)] = task_id
    return sends


def messages_present(client: Any, celery_ids: Iterable[str], queue_keys: list[str], unacked_key: str) -> set[str]:
    """Which of ``celery_ids`` have a message queued or unacked.  The queue is read before the unacked
    hash: a message moves from the one to the other, so it is never missed between the two reads."""
    wanted = {cid: cid.encode() for cid in celery_ids}
    found: set[str] = set()
    for key in queue_keys:
        for raw in client.lrange(key, 0, -1):
            found.update(cid for cid, needle in wanted.items() if needle in raw)
    for raw in client.hvals(unacked_key):
        found.update(cid for cid, needle in wanted.items() if needle in raw)
    return found


def limits(client: Any, keys: Keys, run_id: str, task_ids: Iterable[str]) -> dict[str, Optional[float]]:
    ids = list(task_ids)
    if not ids:
        return {}
    raw = client.hmget(keys.limits(run_id), ids)
    return {tid: float(x) if x else None for tid, x in zip(ids, raw)}


def close_claimed(client: Any, keys: Keys, run_id: str) -> bool:
    """A collect step holds phase 4's close (``DagScheduler.claim_close``: a lease it renews while closing)."""
    return bool(client.exists(keys.dag(run_id)["closed"]))


def lock(client: Any, keys: Keys, run_id: str, seconds: float) -> bool:
    """One watchdog at a time per run (every worker runs one)."""
    return bool(client.set(keys.dag(run_id)["watchdog"], "1", nx=True, ex=max(1, int(seconds))))
