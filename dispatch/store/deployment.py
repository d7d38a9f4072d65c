"""What a process needs from its deployment: settings, the coordination Redis, the state store.

One ``Deployment`` per Celery app (or per client), built lazily in whichever
process runs tasks.  The coordination client is the result backend's own Redis
client, real or embedded, so scheduling uses the same server the chords already
depend on.  Every store-side object of a run (its ledger, its scheduler, its
cancel flag) is built here, from the same keys and TTL.
"""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from dispatch.config import Settings, redact_url
from dispatch.store.keys import Keys
from dispatch.store.ledger import RunLedger
from dispatch.store.scheduler import DagScheduler
from dispatch.store.state import DirectoryStateStore, RedisStateStore, StateStore


# after phase 4 closes: how long a cancelled/broken run's scheduler keys linger, and the "closed" mark
RETIRE_LINGER_S = 600
CLOSED_MARK_S = 24 * 3600


class RedisCache:
    """``KeyValueCache`` for the quorum's result cache, in the deployment's Redis."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def get(self, key: str) -> dict | None:
        raw = self.client.get(self.keys.cache(key))
        return json.loads(raw) if raw else None

    def set(self, key: str, value: dict, ttl_s: int) -> None:
        self.client.set(self.keys.cache(key), json.dumps(value), ex=ttl_s or None)


class Deployment:
    def __init__(self, settings: Settings, redis_client: Any) -> None:
        self.settings = settings
        self.redis = redis_client
        self.keys = Keys(settings.key_prefix)

    @cached_property
    def store(self) -> StateStore:
        return make_store(self.settings, self.redis)

    @property
    def prefix(self) -> str:
        return self.settings.key_prefix

    @property
    def ttl_s(self) -> int:
        return self.settings.state_ttl_s

    @property
    def cache_dir(self) -> Path:
        return Path(self.settings.state_dir) / "index"

    @cached_property
    def quorum_cache(self) -> RedisCache:
        return RedisCache(self.redis, self.keys)

    def ledger(self, run_id: str) -> RunLedger:
        return RunLedger(self.redis, self.keys, run_id, self.ttl_s)

    def scheduler(self, run_id: str) -> DagScheduler:
        return DagScheduler(self.redis, self.prefix, run_id, self.ttl_s)

    def retire(self, run_id: str, linger_s: int = 0) -> None:
        """Phase 4 of ``run_id`` closed: its scheduler keys go, or, with ``linger_s``, expire that soon (a
        cancelled or broken run's late duplicates may still complete into them); its ledger of agent tasks
        expires within ``RETIRE_LINGER_S``: a closed run soon keeps only its compacted state and phase ids."""
        scheduler = self.scheduler(run_id)
        pipe = self.redis.pipeline(transaction=False)
        for name, key in scheduler.keys.items():
            if linger_s > 0 or name == "closed":  # ``closed`` stays a while: a late chord must not close again
                pipe.expire(key, min(self.ttl_s, max(linger_s, CLOSED_MARK_S)) if name == "closed"
                            else min(self.ttl_s, linger_s))
            else:
                pipe.delete(key)
        # the ledger of agent tasks always lingers a little: a cancel racing the close still revokes from it,
        # and an operator can still see what was sent twice after a worker died
        self.ledger(run_id).close(max(linger_s, RETIRE_LINGER_S), pipe)
        pipe.execute()

    # the cancel flag: set by `dispatch cancel`, read by every phase and agent task of the run
    def cancel(self, run_id: str) -> None:
        self.redis.set(self.keys.cancel(run_id), "1", ex=max(1, self.ttl_s))

    def cancelled(self, run_id: str) -> bool:
        return bool(self.redis.exists(self.keys.cancel(run_id)))

    def clear_cancel(self, run_id: str) -> None:
        self.redis.delete(self.keys.cancel(run_id))


def ride_out_outages(client: Any, seconds: float) -> None:
    """Retry commands through a lost connection for about ``seconds`` (redis-py, with backoff).

    On workers, so that a restarted Redis costs a running task a pause, not a
    failure: a task finishing while Redis is away would otherwise lose its
    result and leave its message for the visibility timeout to redeliver.
    """
    import logging
    import time

    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError, OutOfMemoryError, TimeoutError
    from redis.retry import Retry

    warned = [0.0]

    class WarningRetry(Retry):
        """Also through a full Redis (maxmemory under noeviction): writes wait for memory to be freed, as
        for a restart, with one warning a minute (else a task would wait silently)."""

        def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
            def failed(error: Exception, *count: Any) -> Any:
                if isinstance(error, OutOfMemoryError) and time.monotonic() - warned[0] > 60:
                    warned[0] = time.monotonic()
                    logging.getLogger("dispatch.store").warning(
                        "Redis is out of memory (maxmemory reached, eviction off): writes wait up to %gs "
                        "for memory to be freed (%s)", seconds, error)
                return fail(error, *count)
            return super().call_with_retry(do, failed, *args, **kwargs)

    client.set_retry(WarningRetry(ExponentialBackoff(cap=1.0, base=0.05), max(3, int(seconds) + 6),
                                  supported_errors=(ConnectionError, TimeoutError, OutOfMemoryError)))


def make_store(settings: Settings, backend_client: Any = None) -> StateStore:
    """Redis when ``DISPATCH_STATE_URL`` (or a Redis backend) is set, else a local directory."""
    if settings.state_url:
        if backend_client is not None and settings.state_url == settings.result_backend:
            client = backend_client
        else:
            import redis

            client = redis.Redis.from_url(settings.state_url)
        return RedisStateStore(client, settings.key_prefix, settings.state_ttl_s,
                               where=f"Redis at {redact_url(settings.state_url)}")
    return DirectoryStateStore(settings.state_dir)
