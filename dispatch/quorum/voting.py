"""Counting the votes: weighted shares, thresholds, confidence, deficiencies.

Shares are taken over the weight that *answered*; abstentions (errors, timeouts,
unreadable answers, open breakers) are not votes.  Defaults are the reference
system's: PASS when the PASS share >= ``pass_threshold`` (0.60); otherwise RETRY
when the RETRY share >= ``retry_threshold`` (0.40) or PASS + RETRY >= 0.60
(the breakdown is salvageable); otherwise FAIL.

``confidence`` is the weight-averaged confidence of the votes behind the
decision, scaled by their share of the *whole* quorum's weight: unanimity among
everyone configured gives back the validators' own confidence; a decision that
rests on part of the quorum, or on abstentions, is reported as less certain.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from dispatch.config import QuorumOptions
from dispatch.models import Recommendation, ValidatorVote

EPSILON = 1e-9  # 3 of 5 is 0.6, whatever the floating point says


@dataclass
class Tally:
    decision: Recommendation
    confidence: float
    shares: dict[str, float]  # of the answered weight
    answered_share: float  # answered weight / configured weight
    quorum_reached: bool
    deficiencies: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def decide(shares: dict[str, float], options: QuorumOptions) -> tuple[Recommendation, tuple[str, ...]]:
    """The decision and the recommendations that count as supporting it."""
    if shares["PASS"] + EPSILON >= options.pass_threshold:
        return "PASS", ("PASS",)
    if shares["RETRY"] + EPSILON >= options.retry_threshold:
        return "RETRY", ("RETRY",)
    if shares["PASS"] + shares["RETRY"] + EPSILON >= options.pass_threshold:
        return "RETRY", ("PASS", "RETRY")
    return "FAIL", ("FAIL",)


def tally(votes: Sequence[ValidatorVote], options: QuorumOptions) -> Tally:
    """Count ``votes`` and apply the no-quorum policy (see ``runner``'s docstring)."""
    total = sum(max(v.weight, 0.0) for v in votes)
    answered = [v for v in votes if not v.abstained and v.weight > 0]
    answered_weight = sum(v.weight for v in answered)
    answered_share = answered_weight / total if total > 0 else 0.0
    quorum_reached = answered_share + EPSILON >= options.min_answered_share
    deficiencies = merge_deficiencies(v.deficiencies for v in answered)
    warnings: list[str] = []

    if answered_weight <= 0:
        shares = {"PASS": 0.0, "RETRY": 0.0, "FAIL": 0.0}
        # Nobody answered: nothing is known about the breakdown.  RETRY asks again
        # (outages pass); once retries are exhausted the run warns and goes on.
        decision: Recommendation = "RETRY"
        supporting: tuple[str, ...] = ()
    else:
        shares = {rec: sum(v.weight for v in answered if v.recommendation == rec) / answered_weight
                  for rec in ("PASS", "RETRY", "FAIL")}
        decision, supporting = decide(shares, options)

    backing = [v for v in answered if v.recommendation in supporting]
    confidence = (sum(v.weight * (v.confidence if v.confidence is not None else 0.0) for v in backing) / total
                  if total > 0 else 0.0)

    if not quorum_reached:
        warnings.append(f"Quorum not reached: {answered_share * 100:.1f}% of validator weight answered "
                        f"(minimum {options.min_answered_share * 100:.1f}%)")
        if options.on_no_quorum == "fail":
            decision = "FAIL"
    return Tally(decision=decision, confidence=round(min(max(confidence, 0.0), 1.0), 4), shares=shares,
                 answered_share=round(answered_share, 4), quorum_reached=quorum_reached,
                 deficiencies=deficiencies, warnings=warnings)


def merge_deficiencies(groups) -> list[str]:
    """Flatten, keeping first occurrences; case, spacing and a final full stop do not make a new one."""
    seen: set[str] = set()
    out: list[str] = []
    for group in groups:
        for item in group:
            key = " ".join(item.split()).rstrip(".").casefold()
            if key and key not in seen:
                seen.add(key)
                out.append(item.strip())
    return out
