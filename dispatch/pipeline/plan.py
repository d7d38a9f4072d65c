"""Phase 2's plan: the graph checked and every task's agent resolved, once.

The same function plans in phase 2, in the preflight before anything is
submitted, and when a person edits the tasks at a checkpoint, so all three
refuse the same faults with the same messages; phase 4 runs the
configurations resolved here (``TaskPlan.agent_configs``).
"""
from __future__ import annotations

from typing import Callable, Iterable

from dispatch.agents import known_agent_names, resolve_agents
from dispatch.agents.resolve import unknown_agents_message
from dispatch.config import ComponentConfig, DispatchConfig
from dispatch.errors import ConfigError
from dispatch.models import TaskPlan, TaskSpec
from dispatch.planning.graph import GraphError, check_plan, plan_tasks


def plan_run(tasks: list[TaskSpec], config: DispatchConfig) -> TaskPlan:
    """Graph faults raise ``GraphError``; unknown agents and bad agent options raise it too, with the
    task's path (``tasks[2].agent: unknown agent 'coder' ...``)."""
    kind, resolved = _resolver(tasks, config)
    plan = plan_tasks(tasks, kind)
    plan.agent_configs = resolved
    return plan


def check_run(tasks: Iterable[TaskSpec], config: DispatchConfig) -> None:
    """Every fault ``plan_run`` refuses, with its message, without building the plan: the preflight's
    check of a breakdown before it is submitted (a 100k-task plan is phase 2's to build, on a worker)."""
    kind, _ = _resolver(tasks, config)
    check_plan(tasks, kind)


def _resolver(tasks: Iterable[TaskSpec], config: DispatchConfig) -> tuple[Callable[[str], str],
                                                                            dict[str, ComponentConfig]]:
    """Unknown agents refused (one message for all); a name -> kind resolver filling the configs it used."""
    known = known_agent_names(config)
    unknown = [(i, t.agent) for i, t in enumerate(tasks) if t.agent not in known]
    if unknown:  # one message for all of them, with the how-to-define help once
        paths = ", ".join(f"tasks[{i}].agent" for i, _ in unknown)
        raise GraphError(f"{paths}: {unknown_agents_message([name for _, name in unknown], config)}")
    resolved: dict[str, ComponentConfig] = {}

    def kind(name: str) -> str:
        if name not in resolved:
            resolved[name] = resolve_agents([name], config)[name]
        return resolved[name].kind

    return kind, resolved


def agent_configs(tasks: list[TaskSpec], config: DispatchConfig) -> dict[str, ComponentConfig]:
    """The configuration of every agent the tasks name (``ConfigError`` naming every unknown one)."""
    return resolve_agents((t.agent for t in tasks), config)


__all__ = ["ConfigError", "agent_configs", "check_run", "plan_run"]
