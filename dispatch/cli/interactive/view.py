"""What a checkpoint shows: a compact, readable summary of the phase just run.

Pure functions from the state to lines of text, so what a human sees is the
state as the next phase will receive it (edits included), and so it can be
tested without a terminal.
"""
from __future__ import annotations

import textwrap
from typing import Any, Optional, Sequence

from dispatch.common.spend import describe
from dispatch.common.text import clip, text_table
from dispatch.models import ExecutionPhase, PhaseResult, PhaseState
from dispatch.pipeline.spend import effective_budget
from dispatch.report.usage import run_usage

RULE = "─"
DEFAULT_WIDTH = 100
CELL_LIMIT = 40  # columns before the last; the last takes what the width leaves


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], total_width: int = DEFAULT_WIDTH) -> list[str]:
    """A checkpoint table ``total_width`` columns wide, with a rule under the headers."""
    return text_table(headers, rows, rule=True, width=total_width, cell_limit=CELL_LIMIT)


def heading(title: str, w: int) -> str:
    text = f"{RULE * 2} {title} "
    return text + RULE * max(4, w - len(text))


def bullets(items: Sequence[str], w: int) -> list[str]:
    """Wrapped, never clipped: deficiencies and errors are what a reviewer must read in full."""
    lines: list[str] = []
    for item in items:
        lines += textwrap.wrap(str(item), w, initial_indent="  - ", subsequent_indent="    ") or ["  -"]
    return lines


def outcome_line(result: Optional[PhaseResult]) -> str:
    if result is None:
        return "not run"
    if result.skipped:
        return f"skipped ({result.output_data.get('reason', '')})"
    if not result.success:
        return f"✗ failed in {result.duration_ms:.0f}ms"
    return f"✓ completed in {result.duration_ms:.0f}ms"


def task_table(state: PhaseState, w: int, with_context: bool = False) -> list[str]:
    levels = {tid: i for i, level in enumerate(state.plan.levels) for tid in level} if state.plan else {}
    headers = ["#", "task_id", "agent", "depends on"]
    if levels:
        headers.append("level")
    if with_context:
        headers += ["context", "unmatched"]
    headers.append("description")
    rows = []
    for i, task in enumerate(state.tasks_data):
        row: list[Any] = [i, task.task_id, task.agent, ",".join(task.dependencies) or "-"]
        if levels:
            row.append(levels.get(task.task_id, "?"))
        if with_context:
            ctx = state.task_contexts.get(task.task_id)
            row += [f"{len(ctx.items)} items ~{ctx.total_tokens}t" if ctx else "-",
                    len(ctx.unmatched_requirements) if ctx else "-"]
        row.append(task.description)
        rows.append(row)
    return [f"Tasks ({len(rows)}):"] + table(headers, rows, w)


def context_summary(state: PhaseState, w: int) -> list[str]:
    ctx = state.global_context
    if ctx is None:
        return ["No global context (later phases run without it)."]
    lines = [f"Items: {len(ctx.items)}   tokens: ~{ctx.total_tokens} of {ctx.budget_tokens} budget   "
             f"queries: {len(ctx.queries)}"]
    for query in ctx.queries[:8]:
        lines.append(f"  - {clip(query, 70)}: {ctx.per_query_hits.get(query, 0)} hits")
    lines += bullets([f"⚠ {error}" for error in ctx.errors[:5]], w)
    if ctx.items:
        top = sorted(ctx.items, key=lambda item: -item.score)[:10]
        lines += ["Top items:"] + table(["score", "tokens", "source"],
                                        [[f"{i.score:.2f}", i.tokens, i.source] for i in top], w)
    return lines


def quorum_summary(state: PhaseState, w: int) -> list[str]:
    q = state.quorum_result
    if q is None:
        return ["No quorum result."]
    lines = [f"Decision: {q.decision}   confidence: {q.confidence * 100:.1f}%   retries: {q.retry_count}   "
             f"answered: {q.answered_share * 100:.0f}%" + ("" if q.quorum_reached else "   (no quorum)")]
    if q.deficiencies:
        lines.append(f"Deficiencies ({len(q.deficiencies)}):")
        lines += bullets(q.deficiencies, w)
    if q.votes:
        lines += ["Votes:"] + table(
            ["validator", "vote", "confidence", "note"],
            [[v.validator, v.recommendation or "abstained",
              f"{v.confidence * 100:.0f}%" if v.confidence is not None else "-",
              v.error or f"{len(v.deficiencies)} deficiencies"] for v in q.votes], w)
    lines += bullets([f"⚠ {warning}" for warning in q.warnings], w)
    feedback = state.input_extras.get("quorum_feedback")
    if feedback:
        lines += ["Feedback given with the last retry:"] + bullets([feedback], w)
    return lines


def plan_summary(state: PhaseState, w: int) -> list[str]:
    plan = state.plan
    if plan is None:
        return ["No task plan."]
    return [f"Levels: {len(plan.levels)}   max parallelism: {max((len(lv) for lv in plan.levels), default=0)}   "
            f"critical path ({plan.critical_path_length}): {clip(' -> '.join(plan.critical_path), max(20, w - 50))}"]


def results_summary(state: PhaseState, w: int) -> list[str]:
    rows = []
    for r in state.task_results:
        status = "skipped" if r.skipped else ("ok" if r.success else "FAILED")
        detail = r.error if r.error else _output_gist(r.output)
        rows.append([r.task_id, r.agent, status, f"{r.duration_ms:.0f}ms", r.worker or "-", detail])
    ok = sum(1 for r in state.task_results if r.success)
    return [f"Results: {ok} of {len(rows)} succeeded"] + table(
        ["task_id", "agent", "status", "time", "worker", "output / error"], rows, w)


FILES_SHOWN = 8  # per task; the rest is counted


def changes_summary(state: PhaseState, w: int) -> list[str]:
    """Git workspaces: per task, ``+A -D path`` for each file its change touched; then the integration
    branch (merged, dropped at this checkpoint, left out with the reason)."""
    changed = [r for r in state.task_results if r.changes is not None]
    integration = state.integration
    result = state.result_for(ExecutionPhase.PARALLEL_EXECUTION)
    error = result.output_data.get("integration_error") if result else None
    if not changed and integration is None and not error:
        return []
    lines = [f"Changes ({sum(1 for r in changed if r.changes and r.changes.files)} of {len(changed)} tasks "
             f"changed files):"]
    pad = min(max((len(r.task_id) for r in changed), default=0), 30)
    for r in changed:
        assert r.changes is not None
        files = r.changes.files
        entries = [f"+{f.added} -{f.deleted} {f.path}" for f in files[:FILES_SHOWN]] or ["no change"]
        if len(files) > FILES_SHOWN:
            entries.append(f"... {len(files) - FILES_SHOWN} more files")
        if not r.success:
            entries[0] += "   (failed: kept on its ref, never merged)"
        for i, entry in enumerate(entries):  # the task id once, then its files aligned under the first
            head = (clip(r.task_id, 30) if i == 0 else "").ljust(pad)
            lines.append(f"  {head}  {clip(entry, max(20, w - pad - 4))}")
    if integration is not None:
        lines.append(f"Integration: {integration.ref.removeprefix('refs/heads/')} ({integration.commit[:12]}): "
                     f"merged {', '.join(integration.merged) or 'nothing'}")
        if integration.dropped:
            lines += bullets([f"dropped here: {', '.join(integration.dropped)} (each change stays on its own ref)"], w)
        lines += bullets([f"✗ {c.task_id} left out: {', '.join(c.files) + ': ' if c.files else ''}{c.reason}"
                          for c in integration.conflicts], w)
    elif error:
        lines += bullets([f"✗ the integration failed: {error}"], w)
    return lines


def integration_edit_header(state: PhaseState, candidates: Sequence[str]) -> list[str]:
    """The comment on top of the integration edit: what the list means, and each task's change."""
    assert state.integration is not None
    by_id = {r.task_id: r for r in state.task_results}
    pad = max((len(t) for t in candidates), default=0)
    changes = []
    for task_id in candidates:
        changed = by_id[task_id].changes
        files = changed.files if changed else []
        summary = ", ".join(f"+{f.added} -{f.deleted} {f.path}" for f in files[:FILES_SHOWN]) or "no files"
        more = f", {len(files) - FILES_SHOWN} more" if len(files) > FILES_SHOWN else ""
        needs = [d for d in next((t.dependencies for t in state.tasks_data if t.task_id == task_id), [])
                 if d in candidates]
        changes.append(f"  {task_id.ljust(pad)}  {summary}{more}" + (f"   (builds on {', '.join(needs)})"
                                                                      if needs else ""))
    branch = state.integration.ref.removeprefix("refs/heads/")
    return [f"The task changes the integration branch {branch} holds, as a JSON list of task ids.",
            "Delete an id to drop that change: the branch is rebuilt from the base without it, and",
            f"the change stays on its own ref (dispatch diff {state.run_id} TASK_ID). Put an id back to",
            "merge it again. A task that builds on a dropped one carries its change: drop it too.",
            "", "Changes:", *changes, ""]


def _output_gist(output: Any) -> str:
    if isinstance(output, dict):
        for key in ("summary", "description", "text", "stdout", "result"):
            if output.get(key):
                return str(output[key])
    return "" if output is None else str(output)


def spend_line(state: PhaseState) -> list[str]:
    """``Spent so far: ~$0.042, 18.3k tokens (budget: max_tokens 50000)``; nothing when no model was called."""
    usage = run_usage(state)
    if usage is None:
        return []
    budget = effective_budget(state)
    caps = [f"{k} {v:g}" for k, v in (("max_cost_usd", budget.max_cost_usd), ("max_tokens", budget.max_tokens),
                                      ("max_wall_s", budget.max_wall_s)) if v is not None]
    return [f"Spent so far: {describe(usage.total)}" + (f" (budget: {', '.join(caps)})" if caps else "")]


def checkpoint_lines(when: str, number: int, state: PhaseState, w: int = DEFAULT_WIDTH) -> list[str]:
    """The whole summary block for one checkpoint, ``w`` columns wide."""
    phase = ExecutionPhase.of(number)
    if when == "before":
        return [heading(f"Before phase {number}: {phase.title}", w), *plan_summary(state, w)[:1 if state.plan else 0],
                *task_table(state, w, with_context=bool(state.task_contexts))]
    result = state.result_for(phase)
    lines = [heading(f"Checkpoint after phase {number}: {phase.title}", w), outcome_line(result),
             *spend_line(state)]
    if result is not None and result.error and phase != ExecutionPhase.QUORUM_VALIDATION:
        lines += bullets([result.error], w)  # the quorum's error repeats its deficiencies, shown below
    if phase == ExecutionPhase.CONTEXT_GATHERING:
        lines += context_summary(state, w)
    elif phase == ExecutionPhase.QUORUM_VALIDATION:
        lines += quorum_summary(state, w) + task_table(state, w)
    elif phase == ExecutionPhase.TASK_PLANNING:
        lines += plan_summary(state, w) + task_table(state, w)
    elif phase == ExecutionPhase.CONTEXT_FILTERING:
        available = "with" if state.global_context is not None else "without"
        lines += [f"Filtered {available} global context; next: phase 4 runs these tasks."]
        lines += task_table(state, w, with_context=True)
    else:
        lines += results_summary(state, w) + changes_summary(state, w)
    return lines
