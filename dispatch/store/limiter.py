"""Provider rate limits shared by every worker of a deployment: ``common.ratelimit``'s limiter, in Redis.

Each decision is one Lua script (``lua/limit_*.lua``), timed by the Redis
server's clock, so 50 workers on 10 machines see one budget per provider:
``limit_acquire`` (a hold-off, requests and tokens per minute, in-flight
leases: all or nothing), ``limit_release`` (the lease back, tokens reconciled
with what the call used), ``limit_hold`` (a Retry-After for everyone).  The
keys are the deployment's (``Keys.provider_rate``, ``Keys.provider_leases``);
the embedded mode runs the same scripts on its in-process Redis.
"""
from __future__ import annotations

from typing import Any, Optional

from dispatch.common.ratelimit import Decision
from dispatch.config import ProviderLimits
from dispatch.store.keys import Keys
from dispatch.store.scheduler import script


class RedisLimiter:
    """``common.ratelimit.RateLimiter`` on a Redis client (real or fakeredis)."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._acquire = client.register_script(script("limit_acquire"))
        self._release = client.register_script(script("limit_release"))
        self._hold = client.register_script(script("limit_hold"))

    def _keys(self, name: str) -> list[str]:
        return [self.keys.provider_rate(name), self.keys.provider_leases(name)]

    def try_acquire(self, name: str, limits: ProviderLimits, tokens: int, lease_id: str,
                    lease_s: float) -> Decision:
        granted, wait_ms, reason = self._acquire(keys=self._keys(name), args=[
            limits.requests_per_minute or 0, limits.tokens_per_minute or 0, limits.max_concurrency or 0,
            max(0, int(tokens)), lease_id, max(1, int(lease_s * 1000))])
        if int(granted):
            return Decision(True)
        return Decision(False, int(wait_ms) / 1000.0, reason.decode() if isinstance(reason, bytes) else str(reason))

    def release(self, name: str, limits: ProviderLimits, lease_id: str, reserved: int,
                used: Optional[int]) -> None:
        shift = 0.0
        if limits.tokens_per_minute and used is not None:
            shift = (used - reserved) * 60000.0 / limits.tokens_per_minute
        if not limits.max_concurrency and not shift:
            return  # nothing held, nothing to reconcile: no round trip
        self._release(keys=self._keys(name), args=[lease_id, f"{shift:.3f}"])

    def hold_off(self, name: str, seconds: float) -> None:
        self._hold(keys=[self.keys.provider_rate(name)], args=[max(0, int(seconds * 1000))])
