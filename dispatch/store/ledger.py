"""The Celery task ids a run has sent, and where phase 4 reports its progress.

Recorded as tasks are sent (phases by the client at submit, agent tasks by
whoever dispatches them), so ``cancel`` can revoke tasks that have not started
yet.  Two hashes: the phase tasks' few entries stay as long as the run's state
(``dispatch wait`` attaches to a run through them); the agent tasks' entries,
one per task, and phase 4's limits and progress target, expire minutes after
phase 4 closes (``close``): a closed run then keeps no per-task key but its
compacted state.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from dispatch.store.keys import Keys

AGENT_LABEL = "agent:"
LIMITS_CHUNK = 2000  # time limits written per round trip when phase 4 starts


class RunLedger:
    def __init__(self, client: Any, keys: Keys, run_id: str, ttl_s: int) -> None:
        self.client = client
        self.run_id = run_id
        self.ttl_s = max(1, int(ttl_s))
        self.key = keys.ledger(run_id)  # the agent tasks (also written by the completion script)
        self.phases_key = keys.phases(run_id)
        self.progress_key = keys.progress(run_id)
        self.limits_key = keys.limits(run_id)

    def record(self, ids: dict[str, str], pipe: Any = None) -> None:
        """``{celery_task_id: label}``, e.g. ``{"3f2c...": "agent:gen-db-writer"}`` or ``{...: "phase_4"}``."""
        if not ids:
            return
        own = pipe is None
        pipe = self.client.pipeline(transaction=False) if own else pipe
        agents = {cid: label for cid, label in ids.items() if label.startswith(AGENT_LABEL)}
        phases = {cid: label for cid, label in ids.items() if not label.startswith(AGENT_LABEL)}
        for key, entries in ((self.key, agents), (self.phases_key, phases)):
            if entries:
                pipe.hset(key, mapping=entries)
                pipe.expire(key, self.ttl_s)
        if own:
            pipe.execute()

    def tasks(self) -> dict[str, str]:
        """Every task the run has sent (phases and agents), by Celery id."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.phases_key)
        pipe.hgetall(self.key)
        found: dict[str, str] = {}
        for entries in pipe.execute():
            found.update({_text(k): _text(v) for k, v in entries.items()})
        return found

    def start_phase_4(self, celery_id: str, total: int, limits: dict[str, float]) -> None:
        """Phase 4's task id (agent tasks report ``done/total`` on it, where Flower and the CLI look)
        and each task's timeout, which sets the time limits of its Celery task whoever dispatches it."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.progress_key, json.dumps({"task_id": celery_id, "total": total}), ex=self.ttl_s)
        pipe.delete(self.limits_key)
        pipe.execute()
        chunk: dict[str, str] = {}
        for n, (tid, limit) in enumerate(limits.items(), 1):  # a round trip per chunk, not one huge command
            chunk[tid] = repr(float(limit))
            if len(chunk) >= LIMITS_CHUNK or n == len(limits):
                pipe = self.client.pipeline(transaction=False)
                pipe.hset(self.limits_key, mapping=chunk)
                pipe.expire(self.limits_key, self.ttl_s)
                pipe.execute()
                chunk = {}

    def close(self, linger_s: int = 0, pipe: Any = None) -> None:
        """Phase 4 closed: its per-task keys go (``linger_s``: expire that soon instead, for a cancel that
        may still revoke what it recorded).  A late duplicate never writes them again: its ``prepare``
        finds no phase 4 under way (``NoSuchRun``)."""
        own = pipe is None
        pipe = self.client.pipeline(transaction=False) if own else pipe
        for key in (self.key, self.limits_key, self.progress_key):
            if linger_s > 0:
                pipe.expire(key, min(self.ttl_s, linger_s))
            else:
                pipe.delete(key)
        if own:
            pipe.execute()

    @staticmethod
    def parse_target(raw: Any) -> Optional[tuple[str, int]]:
        if not raw:
            return None
        target = json.loads(raw)
        return target["task_id"], int(target["total"])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value
