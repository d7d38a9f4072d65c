"""A run's spend added up from its saved state: total, per phase, per agent, per model.

A pure function of the state, like the rest of ``report/``: the final output,
the HTML and text reports and the resume hint all read the same totals.
"""
from __future__ import annotations

from typing import Optional

from dispatch.common.spend import total
from dispatch.models import ExecutionPhase, PhaseState, RunUsage, Usage

PHASE_1 = ExecutionPhase.QUORUM_VALIDATION.value
PHASE_4 = ExecutionPhase.PARALLEL_EXECUTION.value
UNKNOWN_MODEL = "unknown"


def run_usage(state: PhaseState) -> Optional[RunUsage]:
    """The run's spend: total, per phase, per agent, per model; None when no model was called."""
    phases: dict[str, Usage] = {}
    agents: dict[str, Usage] = {}
    models: dict[str, Usage] = {}

    def add(bucket: dict[str, Usage], key: str, usage: Usage) -> None:
        bucket[key] = bucket.get(key, Usage()) + usage

    quorum = state.quorum_result
    if quorum is not None:
        for vote in (v for a in quorum.attempts for v in a.votes) if quorum.attempts else quorum.votes:
            if vote.usage is not None and vote.usage.calls:
                add(phases, PHASE_1, vote.usage)
                add(agents, f"validator:{vote.validator}", vote.usage)
                add(models, vote.usage.model or UNKNOWN_MODEL, vote.usage)
        if quorum.planner_usage is not None and quorum.planner_usage.calls:
            add(phases, PHASE_1, quorum.planner_usage)
            add(agents, "planner", quorum.planner_usage)
            add(models, quorum.planner_usage.model or UNKNOWN_MODEL, quorum.planner_usage)
    for result in state.task_results:
        if result.usage is not None and (result.usage.calls or result.usage.total_tokens):
            add(phases, PHASE_4, result.usage)
            add(agents, result.agent, result.usage)
            add(models, result.usage.model or UNKNOWN_MODEL, result.usage)
    if state.earlier_usage is not None and state.earlier_usage.calls:
        add(phases, PHASE_4, state.earlier_usage)
        add(agents, "earlier attempts", state.earlier_usage)
        add(models, state.earlier_usage.model or UNKNOWN_MODEL, state.earlier_usage)
    if not phases:
        return None
    return RunUsage(total=total(phases.values()), phases=phases, agents=agents, models=models)

