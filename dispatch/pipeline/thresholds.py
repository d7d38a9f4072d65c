"""A phase that took longer than its configured threshold (``[phases] thresholds_ms``) is marked; the log warns.

Its own module so that closing phase 4 (on the client too) does not import the phase bodies.
"""
from __future__ import annotations

from dispatch.config import DispatchConfig
from dispatch.models import PhaseResult


def check_threshold(result: PhaseResult, config: DispatchConfig) -> None:
    threshold = config.phases.thresholds_ms.get(result.phase.number)
    if threshold is not None and result.duration_ms > threshold:
        result.output_data["threshold_exceeded_ms"] = threshold
