"""A circuit breaker, so a dead retrieval service costs one timeout, not one per query.

Closed: calls go through; ``failures`` consecutive failures open it.  Open: calls
are refused at once (:class:`CircuitOpen`) until ``cooldown_s`` has passed.
Half-open: one trial call goes through; success closes the breaker, failure
opens it for another cool-down.

Breakers are shared per process through :func:`breaker_for`, keyed by the
service they guard, so a long-lived worker remembers a dead service across runs.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitOpen(Exception):
    """Refused without calling: the breaker is open."""


class CircuitBreaker:
    def __init__(self, failures: int = 3, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = max(1, failures)
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._lock = threading.Lock()
        self._count = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self._opened_at is None:
            return CLOSED
        if self.clock() - self._opened_at >= self.cooldown_s:
            return HALF_OPEN
        return OPEN

    def before_call(self) -> None:
        """Raise :class:`CircuitOpen` unless a call may go through now."""
        with self._lock:
            state = self._state()
            if state == OPEN:
                wait = self.cooldown_s - (self.clock() - (self._opened_at or 0.0))
                raise CircuitOpen(f"circuit open after {self._count} consecutive failures; "
                                  f"next try in {max(wait, 0):.1f}s")
            if state == HALF_OPEN:
                if self._trial_running:
                    raise CircuitOpen("circuit half-open: a trial call is already running")
                self._trial_running = True

    def success(self) -> None:
        with self._lock:
            self._count = 0
            self._opened_at = None
            self._trial_running = False

    def failure(self) -> None:
        with self._lock:
            self._count += 1
            if self._trial_running or self._count >= self.failures:
                self._opened_at = self.clock()
            self._trial_running = False


_BREAKERS: dict[str, CircuitBreaker] = {}
_BREAKERS_LOCK = threading.Lock()


def breaker_for(key: str, failures: int, cooldown_s: float) -> CircuitBreaker:
    """The process-wide breaker guarding ``key`` (e.g. a service URL)."""
    with _BREAKERS_LOCK:
        breaker = _BREAKERS.get(key)
        if breaker is None or (breaker.failures, breaker.cooldown_s) != (max(1, failures), cooldown_s):
            breaker = _BREAKERS[key] = CircuitBreaker(failures, cooldown_s)
        return breaker


def reset_breakers() -> None:
    """Forget every shared breaker (tests, or an operator who fixed the service)."""
    with _BREAKERS_LOCK:
        _BREAKERS.clear()
