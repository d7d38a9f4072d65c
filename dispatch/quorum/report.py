"""The phase 1 log, as the guide prints it.

Lines come without the ``[DispatchRunner] `` prefix (the caller adds it) and a
blank line is ``""``.  The same helpers feed the live log (``run_quorum``'s
``on_event``) and ``render_quorum_log``, which rebuilds the transcript from a
stored ``QuorumResult`` (for instance from a saved state file).
"""
from __future__ import annotations

from dispatch.models import QuorumAttempt, QuorumResult

VALIDATING = "Validating task breakdown with AI quorum..."
WARN = "⚠"


def percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


def retry_header(attempt: int, max_retries: int) -> list[str]:
    """Before attempt 2, 3, ...: a blank line and ``Retry attempt k/N``."""
    return ["", f"Retry attempt {attempt - 1}/{max_retries}"]


def attempt_body(attempt: QuorumAttempt) -> list[str]:
    """What follows ``Validating ...`` once the votes of one attempt are in."""
    lines = [f"{WARN} Validator '{v.validator}' abstained: {v.error or 'no answer'}"
             for v in attempt.votes if v.abstained]
    lines.extend(f"Escalated to tier {e.tier}: {e.reason.replace('_', ' ')} ({e.detail})"
                 for e in attempt.escalations)
    if attempt.not_asked:
        saved = len(attempt.not_asked)
        lines.append(f"Not asked ({saved} call{'s' if saved > 1 else ''} saved): {', '.join(attempt.not_asked)}")
    lines.append(f"Quorum decision: {attempt.decision} (confidence: {percent(attempt.confidence)})")
    if attempt.decision != "PASS" and attempt.deficiencies:
        lines.append(f"Deficiencies found: {len(attempt.deficiencies)}")
        lines.extend(f"  - {d}" for d in attempt.deficiencies)
    return lines


def attempt_lines(attempt: QuorumAttempt, max_retries: int) -> list[str]:
    head = retry_header(attempt.attempt, max_retries) if attempt.attempt > 1 else []
    return head + [VALIDATING] + attempt_body(attempt)


def warning_lines(warnings: list[str]) -> list[str]:
    return [f"{WARN} {w}" for w in warnings]


def render_quorum_log(result: QuorumResult, max_retries: int) -> list[str]:
    """Every attempt in order, then the result's warnings (no-quorum, retries exhausted, planner)."""
    lines: list[str] = []
    for attempt in result.attempts:
        lines.extend(attempt_lines(attempt, max_retries))
    lines.extend(warning_lines(result.warnings))
    return lines
