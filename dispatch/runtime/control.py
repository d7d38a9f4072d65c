"""Stopping a run from outside its chain: ``dispatch cancel``, and a phase-4 chord that broke.

Both close phase 4 from the scheduler's records through the pipeline's one
closer (``close_execution``), so a cancelled or broken run reports the same
fields as one that finished.  Reading which agent tasks a broken chord lost
means reading Celery's error text, which is why this lives in ``runtime/``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from dispatch.errors import UsageError
from dispatch.models import PhaseState
from dispatch.pipeline import status
from dispatch.pipeline.execution import close_execution
from dispatch.store import Deployment, RunLedger
from dispatch.store.deployment import RETIRE_LINGER_S
from dispatch.store.parts import tasks_in_memory


@dataclass
class Cancellation:
    run_id: str
    previous_status: str
    status: str
    revoked: int
    finished_tasks: int


def cancel_run(run_id: str, deployment: Deployment, revoke: Callable[[list[str]], None]) -> Cancellation:
    """Stop a run wherever it is; idempotent (cancelling twice revokes again, changes nothing else)."""
    store = deployment.store
    state = store.load(run_id)
    if state is None:
        raise UsageError(f"no run '{run_id}' in {store.describe()} (see 'dispatch runs')")
    previous = state.status
    if previous in ("succeeded", "failed"):
        raise UsageError(f"run {run_id} already {previous}: nothing to cancel")
    deployment.cancel(run_id)
    ids = sorted(deployment.ledger(run_id).tasks())
    if ids:
        revoke(ids)
    # the chord may never collect once its parts are revoked: phase 4 is closed here with what finished
    final = close_phase_4(run_id, deployment, cancel_seen=True)
    finished = sum(1 for r in final.task_results if not r.skipped) if final else 0
    final = final or state
    status.cancelled(final)
    store.save(final)
    return Cancellation(run_id, previous, "cancelled", len(ids), finished)


def close_phase_4(run_id: str, deployment: Deployment, *, cancel_seen: bool = False,
                  broken: Optional[str] = None, lost: Optional[dict[str, str]] = None) -> Optional[PhaseState]:
    """Phase 4's outcome from the scheduler's records, when its chord cannot deliver one.

    None when phase 4 is not under way.  The scheduler keys are left to
    expire (within ``RETIRE_LINGER_S``), never reset: a late duplicate may still complete into them.
    """
    records = deployment.scheduler(run_id).records()  # one moment: another closer may be retiring them
    if records.ref is None:
        return None
    state, finished = tasks_in_memory(deployment.store.load_lean(run_id)), records.results
    if state is None:
        return None
    # claimed by an agent task (``prepare``) and not finished: it was running when the run stopped
    running = {tid for tid in records.claimed if tid not in finished} if cancel_seen else set()
    # a cap reached before the chord broke still pauses the run (the tasks it kept from starting say so)
    close_execution(state, finished, records.started, cancel_seen=cancel_seen,
                    broken=broken, lost=lost, running=running, paused=records.paused)
    deployment.retire(run_id, linger_s=RETIRE_LINGER_S)  # soon gone, not at once (late duplicates)
    return state


def close_broken_chord(run_id: str, deployment: Deployment, exc: BaseException) -> Optional[PhaseState]:
    """A chord part whose process was killed (past its hard time limit) breaks the chord: the run's
    outcome is taken from the scheduler's records and the lost tasks reported, rather than lost."""
    lost = lost_agent_tasks(str(exc), deployment.ledger(run_id))
    closed = close_phase_4(run_id, deployment, broken=f"phase 4's chord broke: {type(exc).__name__}", lost=lost)
    if closed is not None:
        deployment.store.save(closed)
    return closed


def lost_agent_tasks(message: str, ledger: RunLedger) -> dict[str, str]:
    """``{task_id: reason}`` for the agent tasks a chord error names (``Dependency <id> raised ...``)."""
    labels = ledger.tasks()
    lost = {}
    for celery_id, raised in re.findall(r"Dependency (\S+) raised (.+?)(?:$|;|\n)", message):
        label = labels.get(celery_id, "")
        if label.startswith("agent:"):
            reason = ("timed out: past its hard time limit, its worker process was killed"
                      if "TimeLimitExceeded" in raised else f"its worker process was lost: {raised}")
            lost[label.split(":", 1)[1]] = reason
    return lost
