"""Gantt layout: turn a state's timestamps into rows of bars, no drawing.

Layout is separate from SVG so it can be tested as numbers, and so the odd
states a report meets (skipped phases, a phase without timestamps, tasks that
never ran, a worker running several tasks at once) are handled in one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

from dispatch.models import ExecutionPhase, PhaseState, TaskResult
from dispatch.common.text import one_line
from dispatch.report.common import SKIPPED, descriptions, execution_origin, fmt_ms, parse_ts, phase_status, task_status

NOT_RUN_ROWS = 20  # beyond this, tasks that never ran are summed up in one row
UNKNOWN_WORKER = "(unknown worker)"
NOT_RUN = "not run"


@dataclass(frozen=True)
class Bar:
    key: str            # task id or phase name; links and anchors use it
    label: str          # drawn inside the bar when it fits
    start_ms: float     # offset from the chart's origin
    end_ms: float
    status: str         # success | failed | skipped
    tip: str            # hover text, plain (escaped when drawn)
    critical: bool = False
    anchor: Optional[str] = None  # in-page link target, e.g. "task-3"
    note: str = ""      # text drawn right of the bar (phase durations)


@dataclass
class Row:
    label: str          # left column; empty on a group's later lanes
    group: int          # alternate bands by group
    bars: list[Bar] = field(default_factory=list)
    note: str = ""      # drawn in the plot when the row has no bar
    label_tip: str = ""


@dataclass
class Chart:
    rows: list[Row]
    span_ms: float
    links: list[tuple[str, str]] = field(default_factory=list)  # bar key -> bar key (critical path)
    axis_label: str = ""       # what 0 on the axis is, drawn above the row labels
    lead_in_ms: float = 0.0    # from 0 to the first bar: time the run spent before its first phase began
    lead_in_tip: str = ""


def _offset(ts: Optional[datetime], origin: datetime) -> Optional[float]:
    return None if ts is None else (ts - origin).total_seconds() * 1000


def phase_chart(state: PhaseState) -> Chart:
    """One row per recorded phase, on the run's clock: 0 is the run's start (``state.started_at``, when
    it was prepared), so the wall time the header shows is the axis's length.  The stretch before the
    first phase began (submitting, queueing, a worker starting) is the chart's ``lead_in_ms``, drawn
    and labelled rather than left blank.

    A phase without timestamps (an older or hand-made state) is laid after the
    previous one using its ``duration_ms``, so the chart still shows its weight.
    """
    starts = [parse_ts(r.started_at) for r in state.phases_executed]
    run_start = parse_ts(state.started_at)
    known = [s for s in starts if s] + ([run_start] if run_start else [])
    origin = min(known) if known else None
    rows, cursor = [], 0.0
    for i, result in enumerate(state.phases_executed):
        label = f"{result.phase.number}  {result.phase.title}"
        status = phase_status(result)
        row = Row(label=label, group=i)
        if result.skipped:
            row.note = "skipped" + (f": {one_line(str(result.output_data.get('reason', '')), 90)}"
                                    if result.output_data.get("reason") else "")
            rows.append(row)
            continue
        start = _offset(starts[i], origin) if origin else None
        start = cursor if start is None else start
        end = _offset(parse_ts(result.completed_at), origin) if origin else None
        end = start + result.duration_ms if end is None or end < start else end
        cursor = max(cursor, end)
        tip = [f"Phase {result.phase.number}: {result.phase.title}", f"status: {status}",
               f"duration: {fmt_ms(result.duration_ms)}"]
        if result.started_at:
            tip.append(f"started: {result.started_at}")
        if result.retry_count:
            tip.append(f"retries: {result.retry_count}")
        if result.error:
            tip.append(f"error: {one_line(result.error, 300)}")
        row.bars.append(Bar(key=result.phase.value, label="", start_ms=start, end_ms=end,
                            status=status, tip="\n".join(tip), anchor=f"phase-{result.phase.number}",
                            note=fmt_ms(result.duration_ms)))
        rows.append(row)
    first = min((b.start_ms for r in rows for b in r.bars), default=0.0)
    lead_in = first if origin is not None and origin == run_start and first >= 1.0 else 0.0
    started = f" ({state.started_at.replace('T', ' ').replace('Z', ' UTC')})" if state.started_at else ""
    return Chart(rows=rows, span_ms=max([cursor] + [b.end_ms for r in rows for b in r.bars] + [1.0]),
                 axis_label="since the run started" if run_start else "since the first phase",
                 lead_in_ms=lead_in,
                 lead_in_tip=(f"{fmt_ms(lead_in)} from the run's start{started} to its first phase: submitting "
                              "it, waiting in the queue, a worker starting" if lead_in else ""))


def _pack(intervals: list[tuple[float, float, TaskResult]]) -> list[list[tuple[float, float, TaskResult]]]:
    """Greedy interval partitioning: a worker running tasks at once gets one lane per overlap."""
    lanes: list[list[tuple[float, float, TaskResult]]] = []
    for item in sorted(intervals, key=lambda x: (x[0], x[1])):
        for lane in lanes:
            if lane[-1][1] <= item[0] + 1e-6:
                lane.append(item)
                break
        else:
            lanes.append([item])
    return lanes


def _task_tip(result: TaskResult, status: str, description: str, start: Optional[float], critical: bool) -> str:
    tip = [f"task: {result.task_id}", f"agent: {result.agent}", f"status: {status}"]
    if result.worker:
        tip.append(f"worker: {result.worker}")
    if status != SKIPPED:
        tip.append(f"duration: {fmt_ms(result.duration_ms)}")
    if start is not None and status != SKIPPED:
        tip.append(f"started: +{fmt_ms(start)}")
    if result.attempts > 1:
        tip.append(f"attempts: {result.attempts}")
    if critical:
        tip.append("on the critical path")
    if description:
        tip.append(f"description: {one_line(description, 200)}")
    if result.error:
        tip.append(f"error: {one_line(result.error, 300)}")
    return "\n".join(tip)


def task_chart(state: PhaseState) -> Chart:
    """Every agent task, grouped by worker, on phase 4's clock (``common.execution_origin``).

    Phase 4's own clock rather than the run's: when phases 0-3 ran in an earlier
    session (``--load-phase-state``), the gap would flatten every task bar.
    Tasks that never ran go to a last group, drawn from the moment they were
    blocked (their failed or skipped dependency ended) to the end of the phase.
    """
    results = state.task_results
    index = {r.task_id: i for i, r in enumerate(results)}
    descs, critical = descriptions(state), set(state.plan.critical_path if state.plan else [])
    execution = state.result_for(ExecutionPhase.PARALLEL_EXECUTION)
    stamps = [parse_ts(r.started_at) for r in results]
    origin = execution_origin(state)
    if origin is None:
        return Chart(rows=[], span_ms=1.0)

    ran: dict[str, list[tuple[float, float, TaskResult]]] = {}
    ends: dict[str, float] = {}
    for result, start_ts in zip(results, stamps):
        if start_ts is None or result.skipped:
            continue
        start = _offset(start_ts, origin)
        end = _offset(parse_ts(result.completed_at), origin)
        end = start + result.duration_ms if end is None or end < start else end
        ends[result.task_id] = end
        ran.setdefault(result.worker or UNKNOWN_WORKER, []).append((start, end, result))
    span = max(list(ends.values()) + [1.0])
    if execution and execution.completed_at and parse_ts(execution.completed_at):
        span = max(span, _offset(parse_ts(execution.completed_at), origin))

    rows: list[Row] = []
    for group, worker in enumerate(sorted(ran)):
        lanes = _pack(ran[worker])
        for n, lane in enumerate(lanes):
            row = Row(label=worker if n == 0 else "", group=group,
                      label_tip=f"{worker}: {len(ran[worker])} tasks, up to {len(lanes)} at once" if n == 0 else "")
            for start, end, result in lane:
                status, tid = task_status(result), result.task_id
                row.bars.append(Bar(key=tid, label=tid, start_ms=start, end_ms=end, status=status,
                                    tip=_task_tip(result, status, descs.get(tid, ""), start, tid in critical),
                                    critical=tid in critical, anchor=f"task-{index[tid]}"))
            rows.append(row)

    not_run = [r for r, s in zip(results, stamps) if r.skipped or s is None]
    blocked = _blocked_at(state, ends)
    for n, result in enumerate(not_run[:NOT_RUN_ROWS]):
        tid = result.task_id
        row = Row(label=NOT_RUN if n == 0 else "", group=len(ran))
        start = min(blocked.get(tid, 0.0), span)
        row.bars.append(Bar(key=tid, label=tid, start_ms=start, end_ms=span, status=task_status(result),
                            tip=_task_tip(result, task_status(result), descs.get(tid, ""), None, tid in critical),
                            critical=tid in critical, anchor=f"task-{index[tid]}"))
        rows.append(row)
    if len(not_run) > NOT_RUN_ROWS:
        rows.append(Row(label="", group=len(ran),
                        note=f"… and {len(not_run) - NOT_RUN_ROWS} more tasks that did not run (see the task table)"))

    path = [tid for tid in (state.plan.critical_path if state.plan else []) if tid in index]
    return Chart(rows=rows, span_ms=span, links=list(zip(path, path[1:])), axis_label="since phase 4 started")


def _blocked_at(state: PhaseState, ends: dict[str, float]) -> dict[str, float]:
    """For each task that never ran: when its last dependency finished (or was itself blocked)."""
    deps = {t.task_id: t.dependencies for t in state.tasks_data}
    order = state.plan.order if state.plan else [t.task_id for t in state.tasks_data]
    at: dict[str, float] = dict(ends)
    blocked: dict[str, float] = {}
    for tid in order:
        if tid in ends:
            continue
        known = [at[d] for d in deps.get(tid, []) if d in at]
        at[tid] = blocked[tid] = max(known) if known else 0.0
    return blocked
