"""Escalation: which validators one attempt asks, in what order, and why it asked more.

Strong models are slow and cost money; most breakdowns are settled by the
deterministic checks and a cheap model.  So one attempt goes in stages:

1. the deterministic validators (``rules``), whatever their tier, first: they cost
   nothing, and a FAIL from one of them ends the attempt with FAIL (a cycle or an
   unknown agent is a fact; no model vote outweighs it), so no model is asked;
2. then the model validators of the lowest tier configured (usually 0), always;
3. then each higher tier, lowest first, only when the votes so far are not
   decisive (``escalation``): they disagree, too little weight answered
   (``quorum.min_answered_share``), or the decision's confidence is under
   ``quorum.escalate_below``.

The votes of validators never asked are not abstentions: they are left out of
the count, named in the attempt's ``not_asked``, and counted in the result's
``calls_saved``.  With every validator in tier 0 (the default) this is the old
behaviour: all models together, after the rules.
"""
from __future__ import annotations

from typing import Optional, Sequence

from dispatch.models import Escalation, ValidatorVote
from dispatch.quorum.base import Validator
from dispatch.quorum.voting import Tally


def model_tiers(validators: Sequence[Validator]) -> list[tuple[int, list[Validator]]]:
    """The model (non-deterministic) validators grouped by tier, lowest first."""
    models = [v for v in validators if not v.deterministic]
    return [(tier, [v for v in models if v.tier == tier]) for tier in sorted({v.tier for v in models})]


def base_tier(validators: Sequence[Validator]) -> int:
    """The lowest tier configured: it is always asked (with the deterministic checks)."""
    return min((v.tier for v in validators), default=0)


def deterministic_fail(votes: Sequence[ValidatorVote], validators: Sequence[Validator]) -> list[ValidatorVote]:
    """The FAIL votes of deterministic validators (a veto)."""
    deterministic = {v.name for v in validators if v.deterministic}
    return [v for v in votes if v.validator in deterministic and v.recommendation == "FAIL"]


def escalation(votes: Sequence[ValidatorVote], counted: Tally, next_tier: int, min_answered_share: float,
               escalate_below: float) -> Optional[Escalation]:
    """Why the votes so far should be put to ``next_tier``, or None when they are decisive."""
    answered = [v for v in votes if not v.abstained and v.weight > 0]
    seen = sorted({v.recommendation for v in answered if v.recommendation})
    if len(seen) > 1:
        split = ", ".join(f"{v.validator} {v.recommendation}" for v in answered)
        return Escalation(tier=next_tier, reason="disagreement", detail=split)
    if not counted.quorum_reached:
        abstained = ", ".join(v.validator for v in votes if v.abstained) or "nobody answered"
        return Escalation(tier=next_tier, reason="abstentions",
                          detail=f"{counted.answered_share * 100:.1f}% of the weight asked answered "
                                 f"(minimum {min_answered_share * 100:.1f}%); abstained: {abstained}")
    if counted.confidence < escalate_below:
        return Escalation(tier=next_tier, reason="low_confidence",
                          detail=f"{counted.decision} at {counted.confidence * 100:.1f}% confidence "
                                 f"(escalate below {escalate_below * 100:.1f}%)")
    return None


def describe(escalation_: Escalation) -> str:
    """``asked tier 1: disagreement (rules PASS, small RETRY)`` for the log."""
    return f"asked tier {escalation_.tier}: {escalation_.reason.replace('_', ' ')} ({escalation_.detail})"
