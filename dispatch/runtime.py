"""What a task needs from its deployment: settings, the coordination Redis, the state store.

One ``Runtime`` per Celery app, built lazily in whichever process runs tasks.
The coordination client is the result backend's own Redis client, real or
embedded, so scheduling uses the same server the chords already depend on.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from .config import Settings
from .state_store import DirectoryStateStore, RedisStateStore, StateStore


class RedisCache:
    """``KeyValueCache`` for the quorum's result cache, in the deployment's Redis."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def get(self, key: str) -> dict | None:
        import json

        raw = self.client.get(f"{self.prefix}:cache:{key}")
        return json.loads(raw) if raw else None

    def set(self, key: str, value: dict, ttl_s: int) -> None:
        import json

        self.client.set(f"{self.prefix}:cache:{key}", json.dumps(value), ex=ttl_s or None)


class Runtime:
    def __init__(self, settings: Settings, redis_client: Any) -> None:
        self.settings = settings
        self.redis = redis_client

    @classmethod
    def for_app(cls, app: Any) -> "Runtime":
        runtime = getattr(app, "_dispatch_runtime", None)
        if runtime is None:
            settings = getattr(app, "dispatch_settings", None) or Settings.from_env()
            if not settings.embedded:
                ride_out_outages(app.backend.client, settings.reconnect_timeout_s)
            runtime = cls(settings, app.backend.client)
            app._dispatch_runtime = runtime
        return runtime

    @cached_property
    def store(self) -> StateStore:
        return make_store(self.settings, self.redis)

    @property
    def prefix(self) -> str:
        return self.settings.key_prefix

    @property
    def cache_dir(self) -> Path:
        return Path(self.settings.state_dir) / "index"

    @cached_property
    def quorum_cache(self) -> RedisCache:
        return RedisCache(self.redis, self.prefix)

    def cancel_key(self, run_id: str) -> str:
        return f"{self.prefix}:cancel:{run_id}"

    def cancelled(self, run_id: str) -> bool:
        return bool(self.redis.exists(self.cancel_key(run_id)))


def ride_out_outages(client: Any, seconds: float) -> None:
    """Retry commands through a lost connection for about ``seconds`` (redis-py, with backoff).

    On workers, so that a restarted Redis costs a running task a pause, not a
    failure: a task finishing while Redis is away would otherwise lose its
    result and leave its message for the visibility timeout to redeliver.
    """
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    client.set_retry(Retry(ExponentialBackoff(cap=1.0, base=0.05), max(3, int(seconds) + 6)))


def make_store(settings: Settings, backend_client: Any = None) -> StateStore:
    """Redis when ``DISPATCH_STATE_URL`` (or a Redis backend) is set, else a local directory."""
    if settings.state_url:
        if backend_client is not None and settings.state_url == settings.result_backend:
            client = backend_client
        else:
            import redis

            client = redis.Redis.from_url(settings.state_url)
        return RedisStateStore(client, settings.key_prefix, settings.state_ttl_s)
    return DirectoryStateStore(settings.state_dir)
