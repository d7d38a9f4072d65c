"""Circuit breakers: stop calling a provider that keeps failing.

Without one, a dead endpoint costs every attempt of every run a full timeout.
Classic three states: *closed* (calls go through, consecutive failures are
counted), *open* after ``failure_threshold`` consecutive failures (calls are
refused at once: the validator abstains with "circuit open"), and *half-open*
once ``cooldown_s`` has passed (one trial call; success closes, failure reopens
for another cool-down).  Breakers live in a ``BreakerBoard`` keyed by provider
endpoint; the module-level ``BREAKERS`` board is per process, so a worker keeps
what it learned across runs.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_COOLDOWN_S = 30.0


class CircuitBreaker:
    def __init__(self, failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
                 cooldown_s: float = DEFAULT_COOLDOWN_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failure_threshold = max(1, int(failure_threshold))
        self.cooldown_s = float(cooldown_s)
        self.clock = clock
        self.failures = 0
        self._state = CLOSED
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._lock = threading.Lock()

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
        with self._lock:
            self._advance()
            if self._state == CLOSED:
                return True
            if self._state == HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._state = CLOSED
            self.failures = 0
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self.failures += 1
            self._trial_in_flight = False
            if self._state == HALF_OPEN or self.failures >= self.failure_threshold:
                self._state = OPEN
                self._opened_at = self.clock()


class BreakerBoard:
    """Breakers by key, created on first use with the settings of that first use."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def get(self, key: str, failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
            cooldown_s: float = DEFAULT_COOLDOWN_S) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None:
                breaker = self._breakers[key] = CircuitBreaker(failure_threshold, cooldown_s, self.clock)
            return breaker

    def peek(self, key: str) -> Optional[CircuitBreaker]:
        with self._lock:
            return self._breakers.get(key)

    def reset(self) -> None:
        with self._lock:
            self._breakers.clear()


BREAKERS = BreakerBoard()
