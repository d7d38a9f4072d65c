"""The terminal summary: the report's facts as aligned plain-text tables.

For a shell over SSH or a CI log, where no browser is at hand.  Cells are one
line each with control characters removed, so an agent's error output cannot
break the table or send escape sequences to the terminal.
"""
from __future__ import annotations

from typing import Optional

from dispatch.common.spend import describe
from dispatch.common.text import one_line, text_table
from dispatch.models import PhaseState, ValidatorVote
from dispatch.report.common import (FAILED, SKIPPED, SUCCESS, critical_ids, execution_origin, fmt_ms, offset_text,
                                    output_summary, phase_status, run_wall_ms, task_counts, task_status)
from dispatch.report.usage import run_usage

MARKS = {SUCCESS: "✓ ok", FAILED: "✗ failed", SKIPPED: "⚠ skipped"}


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _phases(state: PhaseState) -> list[str]:
    if not state.phases_executed:
        return ["PHASES", "  (no phase has run)"]
    rows = []
    for r in state.phases_executed:
        note = r.error or (str(r.output_data.get("reason", "")) if r.skipped else "")
        rows.append([str(r.phase.number), r.phase.title, MARKS[phase_status(r)],
                     "-" if r.skipped else fmt_ms(r.duration_ms), str(r.retry_count) if r.retry_count else "",
                     one_line(note, 70)])
    total = sum(r.duration_ms for r in state.phases_executed)
    return ["PHASES"] + text_table(["#", "phase", "status", "duration", "retries", "error / reason"], rows,
                                right=(3, 4)) + [f"  total phase time {fmt_ms(total)}"]


def _tasks(state: PhaseState, max_tasks: Optional[int] = None) -> list[str]:
    results = state.task_results
    if not results:
        return ["TASKS", "  (no agent task has run)"]
    counts = task_counts(state)
    workers = {r.worker for r in results if r.worker}
    critical = set(critical_ids(state))
    origin = execution_origin(state)
    rows = []
    shown = results if max_tasks is None or len(results) <= max_tasks else _worst_first(results)[:max_tasks]
    for r in shown:
        said = r.error if r.error or not r.success else output_summary(r.output)
        rows.append([("* " if r.task_id in critical else "  ") + one_line(r.task_id, 40), one_line(r.agent, 20),
                     one_line(r.worker or "-", 30), offset_text(r, origin), "-" if r.skipped else fmt_ms(r.duration_ms),
                     MARKS[task_status(r)], one_line(said, 60)])
    head = (f"TASKS  {counts[SUCCESS]} ok, {counts[FAILED]} failed, {counts[SKIPPED]} skipped "
            f"on {len(workers)} worker{'s' if len(workers) != 1 else ''}")
    lines = [head] + text_table(["  task", "agent", "worker", "start", "duration", "status", "output / error"],
                                rows, right=(3, 4))
    if len(shown) < len(results):
        lines.append(f"  … and {len(results) - len(shown)} more tasks (failed ones are listed first)")
    if critical:
        lines.append("  * on the critical path")
    return lines


def _worst_first(results: list) -> list:
    """Failed, then skipped, then the rest, each in run order: what a capped list must not drop."""
    rank = {FAILED: 0, SKIPPED: 1, SUCCESS: 2}
    return sorted(results, key=lambda r: rank[task_status(r)])


def _vote_row(v: ValidatorVote) -> list[str]:
    return [one_line(v.validator, 30), one_line(v.kind, 16), "abstained" if v.abstained else str(v.recommendation),
            _pct(v.confidence), fmt_ms(v.latency_ms) + (" (cached)" if v.cached else ""),
            one_line(v.error or "; ".join(v.deficiencies), 60)]


def _quorum(state: PhaseState) -> list[str]:
    q = state.quorum_result
    if q is None:
        return ["QUORUM  did not run (--enable-quorum)"]
    retries = f" · {q.retry_count} retr{'y' if q.retry_count == 1 else 'ies'}" if q.retry_count else ""
    lines = [f"QUORUM  {q.decision} · confidence {_pct(q.confidence)} · answered {_pct(q.answered_share)}"
             f"{'' if q.quorum_reached else ' · no quorum'}{retries}"]
    if q.votes:
        lines += text_table(["validator", "kind", "vote", "confidence", "latency", "deficiencies / error"],
                         [_vote_row(v) for v in q.votes], right=(3, 4))
    lines += [f"  deficiency: {one_line(d, 100)}" for d in q.deficiencies]
    lines += [f"  warning: {one_line(w, 100)}" for w in q.warnings]
    return lines


def _critical_path(state: PhaseState) -> list[str]:
    path = critical_ids(state)
    if not path:
        return []
    by_id = {r.task_id: r for r in state.task_results}
    total = sum(by_id[t].duration_ms for t in path if t in by_id and not by_id[t].skipped)
    chain = " → ".join(one_line(t, 40) for t in path)
    return [f"CRITICAL PATH  {chain}" + (f"  ({fmt_ms(total)} of task time)" if by_id else "")]


def render_text(state: PhaseState, max_tasks: Optional[int] = None) -> str:
    """The run as a few plain-text tables: phases, tasks (the first ``max_tasks``, failed ones first, when
    given), quorum, critical path."""
    status = f"dispatch run {one_line(state.run_id, 80)} · {state.status}"
    span = run_wall_ms(state)
    if span is not None:
        status += f" · wall time {fmt_ms(span)}"
    usage = run_usage(state)
    if usage is not None:
        status += f" · spent {describe(usage.total)}"
    if state.status == "paused" and state.pause_reason:
        status += f" · paused: {one_line(state.pause_reason, 100)}"
    blocks = [[status] + ([f"prompt: {one_line(state.user_prompt, 100)}"] if state.user_prompt.strip() else []),
              _phases(state), _tasks(state, max_tasks), _quorum(state), _critical_path(state)]
    return "\n\n".join("\n".join(b) for b in blocks if b) + "\n"
