"""``sleep``: waits ``input_data.duration_ms`` (or ``seconds``) and succeeds.

For benchmarks of the scheduler (makespan against the critical path), so it does
nothing but wait.  The output repeats the requested duration, not the measured
one, to stay deterministic; the runner records the real ``duration_ms``.  The
option ``duration_ms`` is the default when a task gives none.  A duration longer
than the invocation's time limit fails with "timed out after Ns" at the limit.
"""
from __future__ import annotations

import math
import time
from typing import Any

from pydantic import Field

from dispatch.agents.base import AGENTS, Agent, AgentInvocation, AgentOptions, AgentOutcome


class SleepOptions(AgentOptions):
    duration_ms: float = Field(default=0.0, ge=0)


@AGENTS.register("sleep")
class SleepAgent(Agent):
    edits_files = False  # answers only: no checkout needed
    Options = SleepOptions

    def run(self, inv: AgentInvocation) -> AgentOutcome:
        data = inv.task.input_data
        if "duration_ms" in data:
            key, raw, scale = "duration_ms", data["duration_ms"], 1.0
        elif "seconds" in data:
            key, raw, scale = "seconds", data["seconds"], 1000.0
        else:
            key, raw, scale = "option duration_ms", self.options.duration_ms, 1.0
        duration_ms = _number(raw)
        if duration_ms is None or duration_ms < 0:
            return AgentOutcome.fail(f"sleep: {key} must be a non-negative number, got {raw!r}")
        duration_ms *= scale
        limit_ms = inv.timeout_s * 1000.0
        if duration_ms > limit_ms:
            time.sleep(max(0.0, inv.timeout_s))
            return AgentOutcome.fail(f"timed out after {inv.timeout_s:g}s")
        time.sleep(duration_ms / 1000.0)
        return AgentOutcome.ok({"task_id": inv.task.task_id, "duration_ms": duration_ms})


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
