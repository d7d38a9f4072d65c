"""The human log on stderr, in the guide's ``[DispatchRunner]`` format.

Rendering is a pure function of the state and the phase result, so the same
lines appear whether a phase ran in this process or on a worker elsewhere.
stdout is never touched here: it carries the JSON result only.
"""
from __future__ import annotations

import sys
from typing import Any, Optional, TextIO

from dispatch.models import ExecutionPhase, PhaseResult, PhaseState, TaskResult

PREFIX = "[DispatchRunner]"
SEPARATOR = "=" * 80
OK, WARN, FAIL = "✓", "⚠", "✗"


class Log:
    """Writes prefixed lines to stderr (or any stream)."""

    def __init__(self, stream: Optional[TextIO] = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet

    def line(self, text: str = "") -> None:
        if self.quiet:
            return
        self.stream.write(f"{PREFIX} {text}\n" if text else "\n")
        self.stream.flush()

    def raw(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(text + "\n")
            self.stream.flush()

    def lines(self, lines: list[str]) -> None:
        for text in lines:
            self.line(text)

    def ok(self, text: str) -> None:
        self.line(f"{OK} {text}")

    def warn(self, text: str) -> None:
        self.line(f"{WARN} {text}")

    def fail(self, text: str) -> None:
        self.line(f"{FAIL} {text}")


def phase_header(phase: ExecutionPhase, state: PhaseState, max_retries: int = 3) -> list[str]:
    """The separator block that opens a phase (guide: "Enhanced Logging")."""
    detail = {
        ExecutionPhase.CONTEXT_GATHERING: f"Queries: {len(state.rag_queries) or 'derived from the prompt and tasks'}",
        ExecutionPhase.QUORUM_VALIDATION: f"Max retries: {max_retries}",
    }.get(phase, f"Tasks: {len(state.tasks_data)}")
    return [SEPARATOR, f"{PREFIX} Phase {phase.number}: {phase.title}", f"{PREFIX} {detail}", SEPARATOR, ""]


def threshold_lines(result: PhaseResult) -> list[str]:
    limit = result.output_data.get("threshold_exceeded_ms")
    if limit is None:
        return []
    return [f"{WARN} Phase {result.phase.number} took {result.duration_ms:.0f}ms, over its threshold of {limit:.0f}ms"]


def phase_body(result: PhaseResult, state: PhaseState, max_retries: int = 3) -> list[str]:
    """Lines (without prefix) describing what a finished phase did."""
    return _phase_lines(result, state, max_retries) + threshold_lines(result)


def _phase_lines(result: PhaseResult, state: PhaseState, max_retries: int) -> list[str]:
    phase, out, ms = result.phase, result.output_data, result.duration_ms
    n = phase.number
    if phase == ExecutionPhase.CONTEXT_GATHERING:
        lines = ["Gathering global context..."]
        if not result.success:
            return lines + [f"{WARN} Phase 0 failed: {result.error}",
                            f"{WARN} Continuing without context (context filtering runs without it)"]
        return lines + [f"{OK} Context gathered: {out.get('total_items', 0)} items, ~{out.get('total_tokens', 0)} tokens",
                        f"Phase 0 completed in {ms:.0f}ms"]
    if phase == ExecutionPhase.QUORUM_VALIDATION:
        lines = _quorum_lines(state, max_retries)
        conf = f"(confidence: {state.quorum_result.confidence * 100:.1f}%)" if state.quorum_result else ""
        if not result.success:
            return lines + [f"{FAIL} Phase 1 failed in {ms:.1f}ms {conf}: {result.error}".replace("  ", " ")]
        if state.quorum_result and state.quorum_result.decision == "RETRY":
            lines.append(f"{WARN} Max retries exceeded: continuing with the current breakdown")
        return lines + [(f"{OK} Phase 1 completed in {ms:.1f}ms {conf}".rstrip()
                         + spent_note(state.quorum_result.usage if state.quorum_result else None))]
    if not result.success:
        return [f"{FAIL} Phase {n} failed in {ms:.0f}ms: {result.error}"]
    if phase == ExecutionPhase.TASK_PLANNING:
        return [f"{OK} Phase 2 completed in {ms:.0f}ms ({out.get('tasks')} tasks, {out.get('levels')} levels, "
                f"critical path {out.get('critical_path_length')})"]
    if phase == ExecutionPhase.CONTEXT_FILTERING:
        return [f"{OK} Phase 3 completed in {ms:.0f}ms ({out.get('tasks_with_context', 0)}/"
                f"{out.get('tasks_prepared', 0)} tasks with context, ~{out.get('total_tokens', 0)} tokens)"]
    return []


SKIP = "⊘"
PAUSE = "⏸"
TASK_LINES = 20  # after phase 4, one line per task up to this many; failures are listed first beyond it


def task_line(task: TaskResult) -> str:
    """``✓ scan-tree echo 12 ms — <first line of output>``, ``✗ ... — <error>``, ``⊘ ... skipped: ...``."""
    from dispatch.common.text import one_line
    from dispatch.report.common import fmt_ms, output_summary

    head = f"{one_line(task.task_id, 60)} {one_line(task.agent, 30)}"
    if task.not_run:  # the run paused at a budget cap before it started: resume runs it
        return f"{PAUSE} {head} {one_line(task.error or 'not run', 160)}"
    if task.skipped:
        why = task.error or "skipped"
        return f"{SKIP} {head} {one_line(why if why.startswith('skipped') else 'skipped: ' + why, 160)}"
    said = one_line(task.error if not task.success else output_summary(task.output), 160)
    line = f"{OK if task.success else FAIL} {head} {fmt_ms(task.duration_ms)}" + (f" — {said}" if said else "")
    return line + changed_files(task)


def changed_files(task: TaskResult, limit: int = 4) -> str:
    """`` [+12 -3 src/calc.py, +1 -0 README]``: what the task's change touched (git workspaces)."""
    if task.changes is None or not task.changes.files:
        return ""
    files = [f"+{f.added} -{f.deleted} {f.path}" for f in task.changes.files[:limit]]
    more = len(task.changes.files) - limit
    return " [" + ", ".join(files) + (f", {more} more" if more > 0 else "") + "]"


def integration_lines(state: PhaseState) -> list[str]:
    """The integration branch, and every task left out of it with its files."""
    integration = state.integration
    if integration is None:
        return []
    lines = [f"{OK if not integration.conflicts else WARN} Integration: {len(integration.merged)} task change(s) "
             f"merged into {integration.ref.removeprefix('refs/heads/')} ({integration.commit[:12]})"]
    for conflict in integration.conflicts:
        if not conflict.files and conflict.reason:  # no file collides: it builds on a change left out
            lines.append(f"{FAIL} {conflict.task_id} left out: {conflict.reason} (its change stays on its own ref)")
            continue
        lines.append(f"{FAIL} {conflict.task_id} left out: {', '.join(conflict.files)} conflict with "
                     f"{', '.join(conflict.with_) or 'the base'} (its change stays on its own ref)")
    if integration.dropped:  # left out on purpose at the interactive phase-4 checkpoint
        lines.append(f"{WARN} dropped at the checkpoint: {', '.join(integration.dropped)} "
                     f"(each change stays on its own ref)")
    return lines


def task_lines(state: PhaseState, limit: int = TASK_LINES) -> list[str]:
    """One line per task in run order; a large run shows its failures first, then a count of the rest."""
    tasks = state.task_results
    if len(tasks) <= limit:
        return [task_line(t) for t in tasks]
    # one pass keeping at most ``limit`` lines per rank (failed, skipped, succeeded): the results may be
    # streamed from the store (a 100k-task run), never sorted as one list
    ranked: list[list[Any]] = [[], [], []]
    succeeded = 0
    for t in tasks:
        rank = 0 if not t.success and not t.skipped else 1 if t.skipped else 2
        succeeded += bool(t.success)
        if len(ranked[rank]) < limit:
            ranked[rank].append((task_line(t), bool(t.success)))
    shown = (ranked[0] + ranked[1] + ranked[2])[:limit]
    lines = [line for line, _ in shown]
    rest, ok = len(tasks) - limit, succeeded - sum(1 for _, success in shown if success)
    counts = ", ".join(part for part in (f"{ok} succeeded" if ok else "",
                                         f"{rest - ok} failed or skipped" if rest > ok else "") if part)
    return lines + [f"… and {rest} more tasks ({counts}): dispatch show {state.run_id}"]


def execution_lines(result: PhaseResult, state: PhaseState) -> list[str]:
    out = result.output_data
    mark = OK if result.success else FAIL
    counts = f"{out.get('succeeded', 0)} succeeded, {out.get('failed', 0)} failed"
    if out.get("skipped"):
        counts += f", {out['skipped']} skipped"
    if out.get("not_run"):
        counts += f", {out['not_run']} not run"
    counts += spent_note(out.get("usage"), "; spent ")
    return task_lines(state) + integration_lines(state) \
        + [f"{mark} Phase 4 completed in {result.duration_ms:.0f}ms ({counts})"] + threshold_lines(result)


def spent_note(usage: Any, lead: str = " (spent ", tail: str = "") -> str:
    """`` (spent ~$0.042, 18.3k tokens)`` after a phase line; nothing when no model was called."""
    from dispatch.common.spend import describe
    from dispatch.models import Usage

    said = describe(Usage.model_validate(usage) if isinstance(usage, dict) else usage)
    return f"{lead}{said}{tail or (')' if lead.startswith(' (') else '')}" if said else ""


def _quorum_lines(state: PhaseState, max_retries: int) -> list[str]:
    if state.quorum_result is None:
        return []
    from dispatch.quorum import render_quorum_log

    return render_quorum_log(state.quorum_result, max_retries)
