"""A run's spend, as the engine sees it: the budget that applies, what is spent so far, and the totals.

Why one module: phase 4's scheduler seeds its Redis counters from here
(``budget_plan``), the closer names the cap a pause stopped at, and resume
raises a cap (``raise_caps``) and says how (``resume_hint``): each of those
reads the same budget the same way.  Pricing is ``dispatch.common.spend``; the
totals by phase, agent and model are ``dispatch.report.usage``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

from dispatch.common.spend import SpendCap, to_nano, total
from pydantic import ValidationError

from dispatch.config import BudgetOptions, ComponentConfig, format_validation_error
from dispatch.errors import UsageError
from dispatch.models import PhaseState, TaskResult, Usage
from dispatch.report.usage import run_usage



def effective_budget(state: PhaseState) -> BudgetOptions:
    """The config file's ``[budget]``, with every key the input's ``config.budget`` sets winning."""
    return state.config.budget.over(state.run_config.budget)


def quorum_usage(state: PhaseState) -> Optional[Usage]:
    return state.quorum_result.usage if state.quorum_result is not None else None


def spent_before(state: PhaseState, kept: dict[str, TaskResult]) -> Usage:
    """What the run has spent before phase 4 starts: its quorum, the results a resume kept, and the
    earlier attempts' dropped results."""
    return total([quorum_usage(state), state.earlier_usage, *(r.usage for r in kept.values())])


def quorum_cap(state: PhaseState) -> Optional[SpendCap]:
    """The caps phase 1 checks between its rounds (None: the run has none), with what the run spent before
    it (earlier attempts, results a resume kept); phase 1's own earlier result is what it replaces."""
    budget = effective_budget(state)
    if not budget.capped:
        return None
    before = total([state.earlier_usage, *(r.usage for r in state.task_results if r.success)])
    return SpendCap(budget=budget, spent_before=before, started=started_epoch(state))


def started_epoch(state: PhaseState) -> Optional[float]:
    if not state.started_at:
        return None
    try:
        return datetime.fromisoformat(state.started_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class BudgetPlan:
    """The numbers phase 4's Redis counters start from (dollars in nano-dollars, so INCRBY stays exact)."""

    cost_cap: Optional[int] = None
    token_cap: Optional[int] = None
    deadline: Optional[float] = None  # epoch seconds
    default_cost: int = 0
    default_tokens: int = 0
    spent_cost: int = 0
    spent_tokens: int = 0
    # task id -> (its agent, the agent's own estimate in nano-dollars or None)
    estimates: dict[str, tuple[str, Optional[int]]] = field(default_factory=dict)
    # the scheduler's ``agent_spend`` hash: what the kept results of each agent spent, for its mean
    agent_spend: dict[str, int] = field(default_factory=dict)

    def hash(self) -> dict[str, str]:
        """The scheduler's ``budget`` hash: only the caps that are set."""
        found = {"default_cost": str(self.default_cost), "default_tokens": str(self.default_tokens)}
        for name in ("cost_cap", "token_cap"):
            if getattr(self, name) is not None:
                found[name] = str(getattr(self, name))
        if self.deadline is not None:
            found["deadline"] = repr(self.deadline)
        return found

    def passed(self, now: float) -> Optional[str]:
        """The cap already reached before any task starts (the quorum spent it), else None."""
        if self.cost_cap is not None and self.spent_cost >= self.cost_cap:
            return "max_cost_usd"
        if self.token_cap is not None and self.spent_tokens >= self.token_cap:
            return "max_tokens"
        if self.deadline is not None and now >= self.deadline:
            return "max_wall_s"
        return None


def agent_estimate(component: Optional[ComponentConfig]) -> Optional[float]:
    value = component.options.get("estimated_cost_usd") if component is not None else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def budget_plan(state: PhaseState, kept: dict[str, TaskResult]) -> Optional[BudgetPlan]:
    """What phase 4 reserves against, or None when the run has no cap (nothing is counted then)."""
    budget = effective_budget(state)
    if not budget.capped:
        return None
    spent = spent_before(state, kept)
    started = started_epoch(state)
    configs = state.plan.agent_configs if state.plan else {}
    estimates = {}
    for task in state.tasks_data:
        own = agent_estimate(configs.get(task.agent))
        estimates[task.task_id] = (task.agent, None if own is None else to_nano(own))
    agent_spend: dict[str, int] = {}
    for result in kept.values():  # a resumed run's finished tasks still tell what their agent costs
        if result.usage is not None:
            for name, value in (("cost", to_nano(result.usage.cost_usd)), ("tokens", result.usage.total_tokens),
                                ("n", 1)):
                key = f"{result.agent}:{name}"
                agent_spend[key] = agent_spend.get(key, 0) + value
    return BudgetPlan(
        agent_spend=agent_spend,
        cost_cap=None if budget.max_cost_usd is None else to_nano(budget.max_cost_usd),
        token_cap=budget.max_tokens,
        deadline=None if budget.max_wall_s is None or started is None else started + budget.max_wall_s,
        default_cost=to_nano(budget.default_estimate_usd), default_tokens=budget.default_estimate_tokens or 0,
        spent_cost=to_nano(spent.cost_usd), spent_tokens=spent.total_tokens, estimates=estimates)


CAP_NAMES = {"max_cost_usd": "--max-cost-usd", "max_tokens": "--max-tokens", "max_wall_s": "--max-wall-s"}


def pause_reason(cap: str, budget: BudgetOptions, spent: Usage, wall_s: Optional[float] = None) -> str:
    """``max_tokens 5000 reached (5120 tokens spent)``: the cap, its value, and the spend against it."""
    value = getattr(budget, cap, None)
    if cap == "max_cost_usd":
        used = f"${spent.cost_usd or 0:.4f} spent"
        shown = f"${value:g}" if value is not None else "?"
    elif cap == "max_tokens":
        used, shown = f"{spent.total_tokens} tokens spent", f"{value}"
    else:
        used = f"{wall_s:.0f}s elapsed" if wall_s is not None else "elapsed"
        shown = f"{value:g}s" if value is not None else "?"
    return f"{cap} {shown} reached ({used})"


def cap_of(reason: Optional[str]) -> Optional[str]:
    """The cap a pause reason names (its first word)."""
    word = (reason or "").split(" ", 1)[0]
    return word if word in CAP_NAMES else None


def raise_caps(state: PhaseState, *, max_cost_usd: Optional[float] = None, max_tokens: Optional[int] = None,
               max_wall_s: Optional[float] = None) -> list[str]:
    """``dispatch resume --max-cost-usd 5``: the run's caps as given (in its input budget, which wins over
    the file).  Returns what changed, for the log."""
    given = {"max_cost_usd": max_cost_usd, "max_tokens": max_tokens, "max_wall_s": max_wall_s}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return []
    current = state.run_config.budget or BudgetOptions()
    try:
        raised = BudgetOptions.model_validate({**current.model_dump(exclude_unset=True), **given})
    except ValidationError as exc:
        flags = ", ".join(CAP_NAMES[k] for k in given)
        raise UsageError(f"{flags}: {format_validation_error(exc)}") from None
    state.run_config = state.run_config.model_copy(update={"budget": raised})
    return [f"{k} = {v:g}" for k, v in given.items()]


def resume_hint(state: PhaseState) -> str:
    """``resume RUN_ID --max-tokens 10000``: the command (after the program name) that continues a run paused
    at a cap, the cap doubled (or past the spend, when that is more)."""
    cap = cap_of(state.pause_reason)
    if cap is None:
        return f"resume {state.run_id}"
    budget = effective_budget(state)
    usage = run_usage(state)
    spent = usage.total if usage else Usage()
    current = getattr(budget, cap) or 0
    if cap == "max_tokens":
        value = f"{max(2 * current, 2 * spent.total_tokens, 1000)}"
    elif cap == "max_cost_usd":
        value = f"{max(2 * current, 2 * (spent.cost_usd or 0), 0.01):.2f}"
    else:
        began = started_epoch(state)
        elapsed = time.time() - began if began else current
        value = f"{max(2 * current, elapsed + current, 60):.0f}"
    return f"resume {state.run_id} {CAP_NAMES[cap]} {value}"
