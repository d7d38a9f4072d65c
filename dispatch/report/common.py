"""Small facts both report formats derive from a state the same way.

Kept apart so the HTML page and the terminal table can never disagree on what
"failed" means or how long a phase took.
"""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from dispatch.models import ExecutionPhase, PhaseResult, PhaseState, TaskResult

SUCCESS, FAILED, SKIPPED = "success", "failed", "skipped"


def parse_ts(value: Optional[str]) -> Optional[datetime]:
    """An ISO timestamp from the state, or None: a report must render a partial state."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def phase_status(result: PhaseResult) -> str:
    return SKIPPED if result.skipped else SUCCESS if result.success else FAILED


def task_status(result: TaskResult) -> str:
    return SKIPPED if result.skipped else SUCCESS if result.success else FAILED


def fmt_ms(ms: Optional[float]) -> str:
    """Milliseconds the way a person reads them: ``850 ms``, ``12.4 s``, ``3m 05s``."""
    if ms is None:
        return "-"
    if ms == 0:
        return "0 ms"
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.{1 if ms < 10_000 else 0}f} s".replace(".0 s", " s")
    minutes, seconds = divmod(round(ms / 1000), 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def task_counts(state: PhaseState) -> dict[str, int]:
    counts = {SUCCESS: 0, FAILED: 0, SKIPPED: 0}
    for result in state.task_results:
        counts[task_status(result)] += 1
    return counts


def run_span_ms(state: PhaseState) -> Optional[float]:
    """Wall-clock time from the first recorded start to the last recorded end."""
    starts, ends = [], []
    for item in [*state.phases_executed, *state.task_results]:
        start, end = parse_ts(item.started_at), parse_ts(item.completed_at)
        if start:
            starts.append(start)
        if end:
            ends.append(end)
    if not starts or not ends:
        return None
    return max(0.0, (max(ends) - min(starts)).total_seconds() * 1000)


def execution_origin(state: PhaseState) -> Optional[datetime]:
    """Phase 4's clock: its start, or the first task's if earlier (or if the phase has no record)."""
    execution = state.result_for(ExecutionPhase.PARALLEL_EXECUTION)
    stamps = [parse_ts(r.started_at) for r in state.task_results]
    stamps.append(parse_ts(execution.started_at) if execution else None)
    return min((s for s in stamps if s), default=None)


def offset_text(result: TaskResult, origin: Optional[datetime]) -> str:
    """``+410 ms``: when a task started on phase 4's clock."""
    start = parse_ts(result.started_at)
    return f"+{fmt_ms((start - origin).total_seconds() * 1000)}" if start and origin else "-"


def descriptions(state: PhaseState) -> dict[str, str]:
    return {task.task_id: task.description for task in state.tasks_data}


def critical_ids(state: PhaseState) -> list[str]:
    return list(state.plan.critical_path) if state.plan else []
