"""The one circuit breaker, so a dead remote service costs one timeout, not one per call.

Every remote caller (retrieval services in phase 0, model endpoints in the
quorum and planner) uses this breaker with the same rules:

- *closed*: calls go through; consecutive failures are counted, a success resets them;
- *open* after ``failure_threshold`` consecutive failures: calls are refused at
  once until ``cooldown_s`` has passed;
- *half-open* then: one trial call at a time goes through; its success closes the
  breaker, its failure opens it for another full cool-down.

Two ways to ask: ``allow()`` answers yes or no (a quorum validator abstains),
``before_call()`` raises :class:`CircuitOpen` with the reason (a retriever
reports it).  Breakers are shared through a :class:`BreakerBoard` keyed by the
service they guard; the process-wide ``BREAKERS`` board lets a long-lived worker
remember a dead service across runs.  The clock is injectable for tests.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_COOLDOWN_S = 30.0

Clock = Callable[[], float]


class CircuitOpen(Exception):
    """Refused without calling: the breaker is open (or its one trial call is out)."""


class CircuitBreaker:
    def __init__(self, failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
                 cooldown_s: float = DEFAULT_COOLDOWN_S, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.failure_threshold, self.cooldown_s = 1, 0.0
        self.configure(failure_threshold, cooldown_s)
        self.failures = 0  # consecutive failures so far
        self._state = CLOSED
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._lock = threading.Lock()

    def configure(self, failure_threshold: int, cooldown_s: float) -> None:
        """New settings (a changed config); what the breaker has learned is kept."""
        self.failure_threshold = max(1, int(failure_threshold))
        self.cooldown_s = max(0.0, float(cooldown_s))

    @property
    def state(self) -> str:
        with self._lock:
            self._advance()
            return self._state

    def _advance(self) -> None:
        if self._state == OPEN and self.clock() - self._opened_at >= self.cooldown_s:
            self._state = HALF_OPEN
            self._trial_in_flight = False

    def allow(self) -> bool:
        """May a call go out now?  In half-open state only one trial call at a time may."""
        return self._refusal() is None

    def before_call(self) -> None:
        """Raise :class:`CircuitOpen` (saying why and for how long) unless a call may go out now."""
        reason = self._refusal()
        if reason is not None:
            raise CircuitOpen(reason)

    def _refusal(self) -> Optional[str]:
        with self._lock:
            self._advance()
            if self._state == CLOSED:
                return None
            if self._state == HALF_OPEN:
                if self._trial_in_flight:
                    return "circuit half-open: a trial call is already running"
                self._trial_in_flight = True
                return None
            wait = self.cooldown_s - (self.clock() - self._opened_at)
            return (f"circuit open after {self.failures} consecutive failures; "
                    f"next try in {max(wait, 0.0):.1f}s")

    def record_success(self) -> None:
        with self._lock:
            self._state = CLOSED
            self.failures = 0
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self._advance()
            self.failures += 1
            self._trial_in_flight = False
            if self._state == HALF_OPEN or self.failures >= self.failure_threshold:
                self._state = OPEN
                self._opened_at = self.clock()


class BreakerBoard:
    """Breakers by key (one per remote service), created on first use."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def get(self, key: str, failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
            cooldown_s: float = DEFAULT_COOLDOWN_S) -> CircuitBreaker:
        """The breaker guarding ``key``, with these settings (an existing one keeps its state)."""
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None:
                breaker = self._breakers[key] = CircuitBreaker(failure_threshold, cooldown_s, self.clock)
            else:
                breaker.configure(failure_threshold, cooldown_s)
            return breaker

    def peek(self, key: str) -> Optional[CircuitBreaker]:
        with self._lock:
            return self._breakers.get(key)

    def reset(self) -> None:
        """Forget every breaker (tests, or an operator who fixed the service)."""
        with self._lock:
            self._breakers.clear()


BREAKERS = BreakerBoard()
