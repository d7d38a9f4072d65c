"""The Celery task ids a run has sent, and where phase 4 reports its progress.

Recorded as tasks are sent (phases by the client at submit, agent tasks by
whoever dispatches them), so ``cancel`` can revoke tasks that have not started
yet.  Keys expire with the run's state.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from dispatch.store.keys import Keys


class RunLedger:
    def __init__(self, client: Any, keys: Keys, run_id: str, ttl_s: int) -> None:
        self.client = client
        self.run_id = run_id
        self.ttl_s = max(1, int(ttl_s))
        self.key = keys.ledger(run_id)
        self.progress_key = keys.progress(run_id)
        self.limits_key = keys.limits(run_id)

    def record(self, ids: dict[str, str], pipe: Any = None) -> None:
        """``{celery_task_id: label}``, e.g. ``{"3f2c...": "agent:gen-db-writer"}``."""
        if not ids:
            return
        own = pipe is None
        pipe = self.client.pipeline(transaction=False) if own else pipe
        pipe.hset(self.key, mapping=ids)
        pipe.expire(self.key, self.ttl_s)
        if own:
            pipe.execute()

    def tasks(self) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.client.hgetall(self.key).items()}

    def start_phase_4(self, celery_id: str, total: int, limits: dict[str, float]) -> None:
        """Phase 4's task id (agent tasks report ``done/total`` on it, where Flower and the CLI look)
        and each task's timeout, which sets the time limits of its Celery task whoever dispatches it."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.progress_key, json.dumps({"task_id": celery_id, "total": total}), ex=self.ttl_s)
        pipe.delete(self.limits_key)
        if limits:
            pipe.hset(self.limits_key, mapping={tid: repr(float(t)) for tid, t in limits.items()})
            pipe.expire(self.limits_key, self.ttl_s)
        pipe.execute()

    @staticmethod
    def parse_target(raw: Any) -> Optional[tuple[str, int]]:
        if not raw:
            return None
        target = json.loads(raw)
        return target["task_id"], int(target["total"])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value
