"""How every retry in dispatch waits: exponential, capped, jittered, and never sooner than a server asked.

One formula for phase retries, quorum RETRYs, retriever and provider calls and
transient agent failures, so they cannot drift apart.
"""
from __future__ import annotations

import random
from email.utils import parsedate_to_datetime
from datetime import datetime, timezone
from typing import Optional

DEFAULT_CAP_S = 30.0


def backoff_delay(attempt: int, base_s: float, cap_s: float = DEFAULT_CAP_S, jitter: float = 0.0,
                  rng: Optional[random.Random] = None, retry_after_s: Optional[float] = None) -> float:
    """Seconds to wait before retry ``attempt`` (0 for the first retry).

    ``base_s * 2**attempt``, at most ``cap_s``; ``jitter`` (0..1) takes up to that
    share off at random, so many callers that failed together do not retry
    together; a server's ``Retry-After`` is a floor (it may exceed the cap: the
    server said so).
    """
    attempt = max(0, int(attempt))
    delay = min(max(0.0, cap_s), max(0.0, base_s) * 2.0 ** min(attempt, 62))
    jitter = min(max(jitter, 0.0), 1.0)
    if jitter and delay:
        delay -= (rng or random).uniform(0.0, jitter) * delay
    if retry_after_s is not None and retry_after_s > delay:
        delay = float(retry_after_s)
    return round(delay, 6)


def parse_retry_after(value: Optional[str], now: Optional[datetime] = None) -> Optional[float]:
    """An HTTP ``Retry-After`` header (seconds, or an HTTP date) as seconds from now; None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)
