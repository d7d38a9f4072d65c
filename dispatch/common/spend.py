"""What a model call cost: the one place that turns tokens into dollars, and adds spend up.

Why here: the quorum (validators, planner), ``llm`` agents and coding-agent
presets all report tokens, and each must price them the same way from the
config's ``[prices."<model>"]`` table.  A cost the caller already knows (a
coding CLI that reports its own bill) is kept: it wins over the table.  No
price known: the cost stays ``None`` and the tokens are still counted.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional

from dispatch.config import BudgetOptions, Price
from dispatch.models import Usage

NANO = 1_000_000_000  # the store counts dollars in integer nano-dollars, so INCRBY stays exact


def cost_usd(model: Optional[str], input_tokens: int, output_tokens: int,
             prices: Mapping[str, Price]) -> Optional[float]:
    """Dollars for these tokens at ``model``'s price, or None when the table has no price for it."""
    price = prices.get(model) if model else None
    if price is None:
        return None
    return round((input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6, 9)


def priced(usage: Optional[Usage], prices: Mapping[str, Price]) -> Optional[Usage]:
    """``usage`` with its cost filled in from the table, unless it already has one (a reported cost wins)."""
    if usage is None or usage.cost_usd is not None:
        return usage
    cost = cost_usd(usage.model, usage.input_tokens, usage.output_tokens, prices)
    return usage if cost is None else usage.model_copy(update={"cost_usd": cost})


def call_usage(model: Optional[str], input_tokens: Optional[int], output_tokens: Optional[int],
               prices: Mapping[str, Price], cost: Optional[float] = None) -> Usage:
    """One model call's usage (unknown token counts count as 0), priced."""
    usage = Usage(input_tokens=input_tokens or 0, output_tokens=output_tokens or 0, cost_usd=cost, calls=1,
                  model=model or None)
    return priced(usage, prices) or usage


def total(usages: Iterable[Optional[Usage]]) -> Usage:
    """The sum of ``usages`` (None entries ignored); an empty sum is zero calls."""
    found = Usage()
    for usage in usages:
        if usage is not None:
            found = found + usage
    return found


def cap_reached(budget: Optional[BudgetOptions], spent: Usage, started: Optional[float] = None,
                now: Optional[float] = None) -> Optional[str]:
    """The cap of ``budget`` that ``spent`` (or the time since ``started``, epoch seconds) has reached, else
    None.  For spenders outside phase 4 (the quorum between its rounds), which have no reservations:
    phase 4's own check is in its Lua scripts, where workers reserve and reconcile atomically."""
    if budget is None:
        return None
    if budget.max_cost_usd is not None and to_nano(spent.cost_usd) >= to_nano(budget.max_cost_usd):
        return "max_cost_usd"
    if budget.max_tokens is not None and spent.total_tokens >= budget.max_tokens:
        return "max_tokens"
    if budget.max_wall_s is not None and started is not None and now is not None \
            and now - started >= budget.max_wall_s:
        return "max_wall_s"
    return None


@dataclass
class SpendCap:
    """A run's caps as a spender outside phase 4 sees them: what was spent before it, and when the run
    started (epoch seconds, for ``max_wall_s``)."""

    budget: BudgetOptions
    spent_before: Usage = field(default_factory=Usage)
    started: Optional[float] = None
    clock: Callable[[], float] = time.time

    def reached(self, spent: Usage) -> Optional[str]:
        """The cap reached once ``spent`` is added to what was spent before, else None."""
        return cap_reached(self.budget, self.spent_before + spent, self.started, self.clock())


def over_attempts(earlier: Optional[dict], usage: Optional[Usage]) -> Optional[Usage]:
    """A task's usage over all its attempts: ``earlier`` (what its retried attempts spent, as the retry's
    message carries it) plus this attempt's; None when no attempt called a model.  A transient failure's
    calls were paid for all the same."""
    found = total([Usage.model_validate(earlier) if earlier else None, usage])
    return found if found.calls or found.total_tokens else None


def to_nano(dollars: Optional[float]) -> int:
    return int(round((dollars or 0.0) * NANO))


def from_nano(nano: int | str | bytes | None) -> float:
    return round(int(nano or 0) / NANO, 9)


def describe(usage: Optional[Usage]) -> str:
    """``~$0.042, 18.3k tokens``; ``""`` when no model was called (the log prints nothing then)."""
    if usage is None or not usage.calls and not usage.total_tokens:
        return ""
    tokens = usage.total_tokens
    count = f"{tokens / 1000:.1f}k tokens" if tokens >= 1000 else f"{tokens} tokens"
    if usage.cost_usd is None:
        return count
    cost = usage.cost_usd
    money = f"~${cost:.3f}" if cost >= 0.001 or cost == 0 else f"~${cost:.6f}".rstrip("0")
    return f"{money}, {count}"
