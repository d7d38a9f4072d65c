"""Small facts both report formats derive from a state the same way.

Kept apart so the HTML page and the terminal table can never disagree on what
"failed" means or how long a phase took.
"""
from __future__ import annotations

import json
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
    """A paused run's tasks that did not start (``not_run``) are drawn as skipped: nothing failed."""
    return SKIPPED if result.skipped or result.not_run else SUCCESS if result.success else FAILED


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


def run_wall_ms(state: PhaseState) -> Optional[float]:
    """The run's wall time: from its start (``state.started_at``, set when it was prepared) to its last
    recorded end.  This is what ``timing_summary.total_duration_ms`` measures from the client, less the
    client's own start-up; ``run_span_ms`` would leave out the wait before the first phase began."""
    start = parse_ts(state.started_at)
    ends = [parse_ts(r.completed_at) for r in [*state.phases_executed, *state.task_results]]
    ends = [e for e in ends if e]
    if start is None or not ends:
        return run_span_ms(state)
    return max(0.0, (max(ends) - start).total_seconds() * 1000)


def output_streams(output: object) -> tuple[str, str]:
    """``(stdout, stderr)`` of a task's output as a person reads them.

    A shell agent's streams as they are (with its parsed JSON, if any, preferred
    only when stdout is empty); an ``llm`` answer's text; anything else (echo,
    python callables) as indented JSON.  No agent is imported: this reads the
    output's shape, which is all a saved state has.
    """
    if output is None:
        return "", ""
    if isinstance(output, str):
        return output, ""
    if isinstance(output, dict):
        if "exit_code" in output and isinstance(output.get("stdout"), str):
            stdout = output["stdout"]
            if not stdout.strip() and "json" in output:
                stdout = json.dumps(output["json"], indent=2, ensure_ascii=False, default=str)
            return stdout, str(output.get("stderr") or "")
        if isinstance(output.get("text"), str) and "model" in output:
            return output["text"], ""
    return json.dumps(output, indent=2, ensure_ascii=False, sort_keys=True, default=str), ""


def output_summary(output: object) -> str:
    """The first line worth showing of a task's output (``show``, the log after phase 4)."""
    if isinstance(output, dict) and "exit_code" not in output and "model" not in output:
        for key in ("summary", "message", "result", "description"):  # echo and most callables say it here
            if isinstance(output.get(key), str) and output[key].strip():
                return output[key]
    stdout, stderr = output_streams(output)
    for text in (stdout, stderr):
        for line in text.splitlines():
            if line.strip() not in ("", "{", "["):
                return line.strip()
    return ""
