"""``dispatch quorum stats``: how each validator has voted, and how its votes turned out.

Pure functions of saved run states (the store's ``list_runs``), through the
records in ``records``: per validator, its counted votes and abstentions, how
often it agreed with the quorum's final decision, how often a PASS of its was
followed by failed tasks, and how often the run's breakdown was edited at a
checkpoint afterwards.  ``render_stats`` is the table people read (stderr),
``stats_json`` the document ``--json`` prints (stdout).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from dispatch.common.text import text_table
from dispatch.models import PhaseState, QuorumStats, ValidatorStats
from dispatch.quorum.records import VoteRecord, vote_records

HEADERS = ("validator", "kind", "tier", "votes", "abstained", "PASS", "RETRY", "FAIL", "agreement",
           "PASS then failed", "edited after", "tokens in/out")


def quorum_stats(states: Sequence[PhaseState]) -> QuorumStats:
    """The record of every validator that voted in ``states``, in order of first appearance."""
    records = vote_records(states)
    by_validator: dict[tuple[str, str], list[VoteRecord]] = {}
    for record in records:
        by_validator.setdefault((record.validator, record.kind), []).append(record)
    runs = {r.run_id: r for r in records}
    return QuorumStats(
        runs=len(runs), runs_with_outcome=sum(1 for r in runs.values() if r.outcome is not None),
        runs_failed=sum(1 for r in runs.values() if r.outcome == "failed"),
        runs_edited=sum(1 for r in runs.values() if r.edited),
        validators=[validator_stats(name, kind, rows) for (name, kind), rows in by_validator.items()])


def validator_stats(name: str, kind: str, records: Sequence[VoteRecord]) -> ValidatorStats:
    counted = [r for r in records if not r.vote.abstained]
    passes = [r for r in counted if r.vote.recommendation == "PASS" and r.outcome is not None]
    failed_after = sum(1 for r in passes if r.tasks_failed > 0)
    agreed = sum(1 for r in counted if r.vote.recommendation == r.decision)
    latencies = [r.vote.latency_ms for r in records if not r.vote.cached]
    return ValidatorStats(
        validator=name, kind=kind, tier=records[-1].tier, votes=len(counted),
        abstentions=len(records) - len(counted),
        pass_votes=sum(1 for r in counted if r.vote.recommendation == "PASS"),
        retry_votes=sum(1 for r in counted if r.vote.recommendation == "RETRY"),
        fail_votes=sum(1 for r in counted if r.vote.recommendation == "FAIL"),
        agreed=agreed, agreement=_share(agreed, len(counted)),
        passes_scored=len(passes), passes_then_failed=failed_after,
        pass_then_failed_rate=_share(failed_after, len(passes)),
        edited_after=sum(1 for r in counted if r.edited),
        input_tokens=sum(r.vote.input_tokens or 0 for r in records),
        output_tokens=sum(r.vote.output_tokens or 0 for r in records),
        mean_latency_ms=round(sum(latencies) / len(latencies), 1) if latencies else None)


def render_stats(stats: QuorumStats) -> list[str]:
    """The table for people: one line per validator, then what the runs were."""
    if not stats.validators:
        return ["No quorum votes recorded yet (runs with --enable-quorum record them)."]
    rows = [(v.validator, v.kind, v.tier, v.votes, v.abstentions, v.pass_votes, v.retry_votes, v.fail_votes,
             _percent(v.agreement, v.agreed, v.votes),
             _percent(v.pass_then_failed_rate, v.passes_then_failed, v.passes_scored),
             v.edited_after, f"{v.input_tokens}/{v.output_tokens}") for v in stats.validators]
    lines = text_table(HEADERS, rows, right=range(2, len(HEADERS)), rule=True)
    lines.append(f"  {stats.runs} runs with a quorum; tasks ran in {stats.runs_with_outcome} "
                 f"({stats.runs_failed} with failed tasks, {stats.runs_edited} edited after the quorum)")
    return lines


def stats_json(stats: QuorumStats) -> dict[str, Any]:
    return stats.model_dump(mode="json")


def _share(part: int, whole: int) -> Optional[float]:
    return round(part / whole, 4) if whole else None


def _percent(share: Optional[float], part: int, whole: int) -> str:
    return "-" if share is None else f"{share * 100:.0f}% ({part}/{whole})"
