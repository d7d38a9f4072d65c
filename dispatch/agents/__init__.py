"""Agent kinds that phase 4 runs, as pure logic (no Celery).

The Celery agent task calls ``make_agent(task.agent, config)`` and then
``run_agent(agent, AgentInvocation(...))``; everything an agent needs arrives in
the invocation and everything it produces leaves in the ``AgentOutcome``.
Importing this package registers every built-in kind in ``AGENTS``.
"""
from dispatch.agents.base import AGENTS, Agent, AgentInvocation, AgentOutcome, run_agent
from dispatch.agents.resolve import (BUILTIN_AGENT_NAMES, build_agent, known_agent_names, make_agent, resolve_agent,
                                     resolve_agents, task_timeout)
from dispatch.agents.prompt import build_prompt

# Importing a kind's module registers it.
from dispatch.agents import echo, llm, python_callable, shell, sleep  # noqa: E402,F401  isort: skip
from dispatch.agents import coding  # noqa: E402,F401  isort: skip

__all__ = ["AGENTS", "BUILTIN_AGENT_NAMES", "Agent", "AgentInvocation", "AgentOutcome", "build_agent", "build_prompt",
           "known_agent_names", "make_agent", "resolve_agent", "resolve_agents", "run_agent", "task_timeout"]
