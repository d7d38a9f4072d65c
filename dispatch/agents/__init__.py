"""Agent kinds that phase 4 runs, as pure logic (no Celery).

The Celery agent task calls ``make_agent(task.agent, config)`` and then
``run_agent(agent, AgentInvocation(...))``; everything an agent needs arrives in
the invocation and everything it produces leaves in the ``AgentOutcome``.
Importing this package registers every built-in kind in ``AGENTS``.
"""
from .base import (AGENTS, BUILTIN_AGENT_NAMES, Agent, AgentInvocation, AgentOutcome, make_agent,
                   resolve_agent, run_agent)
from .prompt import build_prompt

# Importing a kind's module registers it.
from . import echo, llm, python_callable, shell, sleep  # noqa: E402,F401  isort: skip

__all__ = ["AGENTS", "BUILTIN_AGENT_NAMES", "Agent", "AgentInvocation", "AgentOutcome", "build_prompt",
           "make_agent", "resolve_agent", "run_agent"]
