"""The quorum's score sheet: what each validator voted, and what became of the run it voted on.

Nothing is written for it: a saved run state (``PhaseState``) already holds the
quorum's final votes (``quorum_result``) and the tasks' results, and the digest of
the breakdown the quorum judged (``quorum_result.breakdown_digest``) shows whether a
person edited it afterwards at an interactive checkpoint.  So the records are a
pure function of the run history the store lists (``list_runs``), and so are the
weights learnt from them (``quorum.weights = "learned"``).

A run's *outcome* is known once its tasks ran: ``failed`` (a task failed),
``edited`` (its breakdown was changed after the quorum), else ``succeeded``.  A
vote is *borne out* when it was PASS and the run succeeded, or RETRY/FAIL and the
run failed or was edited.  Runs stopped by the quorum (FAIL) or before phase 4
have no outcome: their votes count in ``quorum stats`` but teach no weight.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

from dispatch.models import PhaseState, TaskSpec, ValidatorVote, ValidatorWeight
from dispatch.quorum.base import Validator

Outcome = Literal["succeeded", "failed", "edited"]


def breakdown_digest(tasks: Sequence[TaskSpec]) -> str:
    """sha256 of a breakdown's JSON (keys sorted): equal breakdowns, equal digests."""
    blob = json.dumps([t.model_dump(mode="json") for t in tasks], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class VoteRecord:
    """One validator's vote in one run's final quorum attempt, beside the run's outcome."""

    run_id: str
    validator: str
    kind: str
    tier: int
    vote: ValidatorVote
    decision: str  # the quorum's final decision
    outcome: Optional[Outcome]  # None: the tasks did not run
    edited: bool
    tasks_failed: int
    tasks_succeeded: int

    @property
    def borne_out(self) -> Optional[bool]:
        """Did the outcome bear the vote out?  None for an abstention or a run without outcome."""
        if self.vote.abstained or self.outcome is None:
            return None
        if self.vote.recommendation == "PASS":
            return self.outcome == "succeeded"
        return self.outcome in ("failed", "edited")


def was_edited(state: PhaseState) -> bool:
    """Was the breakdown changed after the quorum judged it (an edit at a checkpoint)?"""
    result = state.quorum_result
    if result is None or result.breakdown_digest is None:
        return False
    return breakdown_digest(state.tasks_data) != result.breakdown_digest


def run_outcome(state: PhaseState) -> Optional[Outcome]:
    results = [r for r in state.task_results if not r.skipped]
    if not results:
        return None
    if any(not r.success for r in results):
        return "failed"
    return "edited" if was_edited(state) else "succeeded"


def vote_records(states: Sequence[PhaseState]) -> list[VoteRecord]:
    """Every final-attempt vote of every run that had a quorum, oldest run first."""
    records: list[VoteRecord] = []
    ordered = sorted(states, key=lambda s: (s.started_at or s.saved_at or "", s.run_id))
    for state in ordered:
        result = state.quorum_result
        if result is None:
            continue
        votes = result.attempts[-1].votes if result.attempts else result.votes
        outcome = run_outcome(state)
        edited = was_edited(state)
        failed = sum(1 for r in state.task_results if not r.success and not r.skipped)
        succeeded = sum(1 for r in state.task_results if r.success and not r.skipped)
        for vote in votes:
            records.append(VoteRecord(run_id=state.run_id, validator=vote.validator, kind=vote.kind, tier=vote.tier,
                                      vote=vote, decision=result.decision, outcome=outcome, edited=edited,
                                      tasks_failed=failed, tasks_succeeded=succeeded))
    return records


def learned_weights(validators: Sequence[Validator], records: Sequence[VoteRecord], *, floor: float,
                    min_samples: int) -> dict[str, ValidatorWeight]:
    """Each validator's weight for this run: its configured weight times the share of its scored
    votes the outcomes bore out, never under ``floor`` times it; the configured weight itself while
    it has fewer than ``min_samples`` scored votes (too little to judge by)."""
    weights: dict[str, ValidatorWeight] = {}
    for validator in validators:
        scored = [r.borne_out for r in records
                  if r.validator == validator.name and r.kind == validator.kind and r.borne_out is not None]
        configured = validator.configured_weight
        if len(scored) < min_samples or configured <= 0:
            weights[validator.name] = ValidatorWeight(weight=configured, samples=len(scored))
            continue
        accuracy = sum(scored) / len(scored)
        weights[validator.name] = ValidatorWeight(weight=round(configured * max(floor, accuracy), 4),
                                                  source="learned", samples=len(scored),
                                                  accuracy=round(accuracy, 4))
    return weights


def configured_weights(validators: Sequence[Validator]) -> dict[str, ValidatorWeight]:
    return {v.name: ValidatorWeight(weight=v.configured_weight) for v in validators}
