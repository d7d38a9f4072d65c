"""Every change of a run's status, in one place.

A run starts ``pending``, is ``running`` while phases run, and ends
``succeeded``, ``failed`` or ``cancelled`` (or ``paused`` at an interactive
checkpoint, or at a budget cap with ``pause_reason`` naming it).  A cancel wins over anything a phase that was still running
reports afterwards, and a stopped run stays stopped until it is prepared again
(``dispatch resume``).
"""
from __future__ import annotations

from typing import Optional

from dispatch.models import ExecutionPhase, PhaseResult, PhaseState, RunStatus

STOPPED: frozenset[RunStatus] = frozenset({"failed", "cancelled"})
ACTIVE: frozenset[RunStatus] = frozenset({"pending", "running"})
FINISHED: frozenset[RunStatus] = frozenset({"succeeded", "failed", "cancelled"})


def is_stopped(state: PhaseState) -> bool:
    return state.status in STOPPED


def prepared(state: PhaseState) -> None:
    """A state about to be submitted (new, loaded or resumed)."""
    state.status = "pending"
    state.pause_reason = None


def running(state: PhaseState) -> None:
    if state.status not in STOPPED:
        state.status = "running"


def resubmitted(state: PhaseState) -> None:
    """An interactive step submits phases again on the run's one run id (a retry of a failed phase too)."""
    if state.status != "cancelled":
        state.status = "running"


def cancelled(state: PhaseState) -> None:
    state.status = "cancelled"


def paused(state: PhaseState) -> None:
    state.status = "paused"


def resumed_after_retry(state: PhaseState) -> None:
    """A failed phase is skipped at an interactive checkpoint: the run is no longer failed."""
    if state.status == "failed":
        state.status = "running"


def after_phase(state: PhaseState, phase: ExecutionPhase, result: PhaseResult, cancel_seen: bool) -> None:
    """A phase of phases 0-3 has recorded ``result``: the run goes on, succeeds or fails.

    A critical failure fails the run (phase 0 is not critical: the guide); a
    run cancelled while the phase ran stays cancelled; the last selected phase
    finishing ends the run.
    """
    if cancel_seen and state.status not in STOPPED:
        state.status = "cancelled"
    if state.status in STOPPED:
        return
    if is_critical_failure(result):
        state.status = "failed"
    elif not state.selected_phases or phase.number >= max(state.selected_phases):
        state.status = "succeeded"
    else:
        state.status = "running"


def after_execution(state: PhaseState, result: PhaseResult, cancel_seen: bool,
                    paused: Optional[str] = None) -> None:
    """Phase 4 closed: its outcome is the run's, unless the run was cancelled or paused at a budget cap
    (``paused``: why, kept as ``pause_reason``)."""
    if cancel_seen or state.status == "cancelled":
        state.status = "cancelled"
    elif paused:
        state.status = "paused"
        state.pause_reason = paused
    else:
        state.status = "succeeded" if result.success else "failed"


def finished_interactively(state: PhaseState, failed: bool) -> None:
    if state.status == "paused" and state.pause_reason:
        return  # phase 4 stopped at a budget cap: the run stays paused for ``dispatch resume``
    if state.status != "cancelled":
        state.status = "failed" if failed else "succeeded"


def is_critical_failure(result: PhaseResult) -> bool:
    """Phase 0 failing is non-critical (the guide); any other failed phase stops the run."""
    return not result.success and not result.skipped and result.phase != ExecutionPhase.CONTEXT_GATHERING
