"""Provider rate limits as a model call sees them: wait for a slot, give it back, pass on a Retry-After.

``[providers.<name>]`` limits mean something only when every worker counts
against the same budget, so the limiter lives in the deployment's Redis
(``dispatch.store.limiter``); this layer cannot import it, so it defines the
:class:`RateLimiter` protocol and the waiting, and the runtime installs the
deployment's limiter on each worker (``dispatch.runtime.limits``) in
:data:`LIMITER`.  Where none is installed (a library call outside a worker),
:class:`Unlimited` grants everything and remembers nothing.

A call waits for its slot (:func:`acquire`) rather than failing, up to its
``max_wait_s``; then it fails as transient, so its caller retries later.  A
limiter that cannot be reached never costs the call: it goes out unlimited,
with a warning in the log.
"""
from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

from dispatch.config import ProviderLimits

logger = logging.getLogger(__name__)

POLL_CAP_S = 0.25   # a max_concurrency wait's hint is the earliest lease's expiry: look again sooner
RECHECK_S = 5.0     # an exact wait is re-checked at least this often (the hold-off may have moved)
WAKE_JITTER_S = 0.01  # callers told the same instant do not all ask at once


@dataclass(frozen=True)
class Decision:
    """A limiter's answer: granted, or how long to wait and for which limit."""

    granted: bool
    wait_s: float = 0.0
    reason: str = ""  # "retry-after", "requests_per_minute", "tokens_per_minute", "max_concurrency"


class RateLimiter(Protocol):
    def try_acquire(self, name: str, limits: ProviderLimits, tokens: int, lease_id: str,
                    lease_s: float) -> Decision: ...

    def release(self, name: str, limits: ProviderLimits, lease_id: str, reserved: int,
                used: Optional[int]) -> None: ...

    def hold_off(self, name: str, seconds: float) -> None: ...


class Unlimited:
    """No limits, no memory: what a process without a deployment uses."""

    def try_acquire(self, name: str, limits: ProviderLimits, tokens: int, lease_id: str,
                    lease_s: float) -> Decision:
        return Decision(True)

    def release(self, name: str, limits: ProviderLimits, lease_id: str, reserved: int,
                used: Optional[int]) -> None:
        pass

    def hold_off(self, name: str, seconds: float) -> None:
        pass


UNLIMITED = Unlimited()


class LimiterSlot:
    """The limiter this process's model calls use; installed by the runtime, reset by tests."""

    def __init__(self) -> None:
        self._limiter: Optional[RateLimiter] = None
        self._lock = threading.Lock()

    def install(self, limiter: RateLimiter) -> None:
        with self._lock:
            self._limiter = limiter

    def uninstall(self, limiter: RateLimiter) -> None:
        """Remove ``limiter`` if it is still the one installed (a later install wins)."""
        with self._lock:
            if self._limiter is limiter:
                self._limiter = None

    def current(self) -> RateLimiter:
        return self._limiter or UNLIMITED

    def reset(self) -> None:
        with self._lock:
            self._limiter = None


LIMITER = LimiterSlot()


class RateLimitTimeout(Exception):
    """No slot within ``max_wait_s``."""

    def __init__(self, name: str, reason: str, waited_s: float, wait_s: float) -> None:
        self.name, self.reason, self.waited_s, self.wait_s = name, reason, waited_s, wait_s
        super().__init__(f"rate limit of provider '{name}' ({reason}): no slot after waiting {waited_s:.1f}s "
                         f"(the next in {wait_s:.1f}s; max_wait_s in [providers.\"{name}\"])")


@dataclass
class Slot:
    """One granted call; :meth:`release` it when the answer (or the error) is in."""

    limiter: RateLimiter
    name: str
    limits: ProviderLimits
    lease_id: str
    reserved: int
    waited_s: float = 0.0
    _released: bool = False

    def release(self, used: Optional[int] = None) -> None:
        """``used``: the tokens the call took (None: unknown, the reservation stands)."""
        if self._released:
            return
        self._released = True
        try:
            self.limiter.release(self.name, self.limits, self.lease_id, self.reserved, used)
        except Exception as exc:  # noqa: BLE001 - an unreachable limiter never costs the call
            _unreachable(exc)


def acquire(limiter: RateLimiter, name: str, limits: ProviderLimits, tokens: int, lease_s: float, *,
            sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
            rng: Optional[random.Random] = None) -> Slot:
    """Wait for a slot at provider ``name``; :class:`RateLimitTimeout` past ``limits.max_wait_s``.

    ``tokens`` is the call's reservation against ``tokens_per_minute``; ``lease_s``
    how long its ``max_concurrency`` lease lasts if it is never released (a killed worker).
    """
    lease_id = uuid.uuid4().hex
    started = clock()
    while True:
        try:
            decision = limiter.try_acquire(name, limits, tokens, lease_id, lease_s)
        except Exception as exc:  # noqa: BLE001 - an unreachable limiter never costs the call
            _unreachable(exc)
            return Slot(UNLIMITED, name, limits, lease_id, tokens, clock() - started)
        waited = clock() - started
        if decision.granted:
            return Slot(limiter, name, limits, lease_id, tokens, waited)
        polling = decision.reason == "max_concurrency"  # its wait is an upper bound: a lease may end sooner
        if (waited if polling else waited + decision.wait_s) > limits.max_wait_s:
            raise RateLimitTimeout(name, decision.reason, waited, decision.wait_s)
        pause = min(decision.wait_s, POLL_CAP_S if polling else RECHECK_S)
        sleep(pause + (rng or random).uniform(0.0, WAKE_JITTER_S))


def hold_off(limiter: RateLimiter, name: str, seconds: float) -> None:
    """Tell every caller of provider ``name`` to wait ``seconds`` (a Retry-After it answered)."""
    try:
        limiter.hold_off(name, seconds)
    except Exception as exc:  # noqa: BLE001
        _unreachable(exc)


def _unreachable(exc: Exception) -> None:
    logger.warning("provider rate limiter unavailable, calling without it: %s: %s", type(exc).__name__, exc)
