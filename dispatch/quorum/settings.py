"""The quorum's own settings beyond ``QuorumOptions``' fields, read and checked in one place.

``[quorum]`` keeps unknown keys (``QuorumOptions`` allows extras), so the phase-1
knobs that only this package reads live here rather than in ``config.py``; a bad
value is a ``ConfigError`` naming ``quorum.<key>`` before any validator is asked.

- ``breaker_failures`` (3), ``breaker_cooldown_s`` (30): the endpoint breakers;
- ``escalate_below`` (0.6): a lower tier whose decision has less confidence than
  this asks the next tier;
- ``weights`` (``"configured"``) or ``"learned"``: weights from the run history,
  never below ``learned_floor`` (0.2) times the configured weight, and only for a
  validator with at least ``learned_min_samples`` (5) scored votes in the last
  ``learned_runs`` (50) runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dispatch.common.breaker import DEFAULT_COOLDOWN_S, DEFAULT_FAILURE_THRESHOLD
from dispatch.config import DispatchConfig, QuorumOptions
from dispatch.errors import ConfigError

WEIGHT_SOURCES = ("configured", "learned")


@dataclass(frozen=True)
class QuorumSettings:
    breaker_failures: int = DEFAULT_FAILURE_THRESHOLD
    breaker_cooldown_s: float = DEFAULT_COOLDOWN_S
    escalate_below: float = 0.6
    weights: str = "configured"
    learned_floor: float = 0.2
    learned_min_samples: int = 5
    learned_runs: int = 50

    @classmethod
    def of(cls, options: QuorumOptions) -> "QuorumSettings":
        extra = options.model_extra or {}
        weights = extra.get("weights", cls.weights)
        if weights not in WEIGHT_SOURCES:
            raise ConfigError(f"quorum.weights: must be one of {', '.join(WEIGHT_SOURCES)} (got {weights!r})")
        return cls(
            breaker_failures=_whole(extra, "breaker_failures", DEFAULT_FAILURE_THRESHOLD),
            breaker_cooldown_s=_seconds(extra, "breaker_cooldown_s", DEFAULT_COOLDOWN_S),
            escalate_below=_fraction(extra, "escalate_below", cls.escalate_below),
            weights=weights,
            learned_floor=_fraction(extra, "learned_floor", cls.learned_floor),
            learned_min_samples=_whole(extra, "learned_min_samples", cls.learned_min_samples),
            learned_runs=_whole(extra, "learned_runs", cls.learned_runs))


def wants_history(config: DispatchConfig) -> bool:
    """Does phase 1 need the run history (``quorum.weights = "learned"``)?  The pipeline asks
    before reading it, so a run that does not learn never lists the store."""
    return (config.quorum.model_extra or {}).get("weights") == "learned"


def reads_context(config: DispatchConfig) -> bool:
    """Does phase 1 read what phase 0 gathers?  A validator declares it with ``reads_context = true``
    (``[validators.<name>]``); the phase graph then runs phase 1 after phase 0 instead of beside it."""
    return any(component.options.get("reads_context") is True for component in config.validators.values())


def history_size(config: DispatchConfig) -> int:
    """How many recent runs to pass to ``run_quorum(history=...)``."""
    return QuorumSettings.of(config.quorum).learned_runs


def _whole(extra: dict[str, Any], key: str, default: int) -> int:
    value = extra.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"quorum.{key}: must be a positive integer (got {value!r})")
    return value


def _seconds(extra: dict[str, Any], key: str, default: float) -> float:
    value = extra.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"quorum.{key}: must be a number of seconds (got {value!r})")
    return float(value)


def _fraction(extra: dict[str, Any], key: str, default: float) -> float:
    value = extra.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"quorum.{key}: must be a number from 0 to 1 (got {value!r})")
    return float(value)
