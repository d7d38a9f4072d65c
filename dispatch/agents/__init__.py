"""Agent kinds that phase 4 runs, as pure logic (no Celery).

The Celery agent task calls ``make_agent(task.agent, config)`` and then
``run_agent(agent, AgentInvocation(...))``; everything an agent needs arrives in
the invocation and everything it produces leaves in the ``AgentOutcome``.
Importing this package registers every built-in kind in ``AGENTS``; the ones that
bring an HTTP stack or a schema library with them (``llm``, the coding agents) by
module, imported when a run first uses one.
"""
from dispatch.agents.base import AGENTS, Agent, AgentInvocation, AgentOutcome, run_agent
from dispatch.agents.resolve import (BUILTIN_AGENT_NAMES, build_agent, known_agent_names, make_agent, resolve_agent,
                                     resolve_agents, task_timeout)
from dispatch.agents.prompt import build_prompt

# Importing a kind's module registers it.
from dispatch.agents import echo, python_callable, shell, sleep  # noqa: E402,F401  isort: skip

AGENTS.register_lazy("llm", "dispatch.agents.llm")
for _kind in ("aider", "claude_code", "codex", "gemini", "mini_swe_agent", "opencode"):
    AGENTS.register_lazy(_kind, f"dispatch.agents.coding.{_kind}")

__all__ = ["AGENTS", "BUILTIN_AGENT_NAMES", "Agent", "AgentInvocation", "AgentOutcome", "build_agent", "build_prompt",
           "known_agent_names", "make_agent", "resolve_agent", "resolve_agents", "run_agent", "task_timeout"]
