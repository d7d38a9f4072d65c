"""``python``: an in-house agent written as a plain function.

Configured as ``callable = "package.module:function"`` (or the dotted
``package.module.function``), called as ``fn(task, context, deps)`` with JSON
dicts: the task (unknown input keys included), its filtered context (``None``
when phase 3 gave it none) and its dependencies' outputs by task id.  What it
returns is the task's output; raising fails the task.  An exception carrying
``transient = True`` asks for a retry; returning an ``AgentOutcome`` gives full
control.  The import happens at ``make_agent`` time, so a wrong path is a
``ConfigError`` during planning, not N failed tasks.

The function runs inside the worker process: it is not killed at the time limit
(the Celery task's own limits apply), so long work belongs in a ``shell`` agent.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from pydantic import Field

from dispatch.config import ComponentConfig
from dispatch.errors import ConfigError
from dispatch.agents.base import AGENTS, Agent, AgentInvocation, AgentOptions, AgentOutcome, describe_exception


class PythonOptions(AgentOptions):
    callable: str = Field(min_length=1)


@AGENTS.register("python")
class PythonAgent(Agent):
    Options = PythonOptions

    def __init__(self, name: str, config: ComponentConfig) -> None:
        super().__init__(name, config)
        try:
            self.fn = import_callable(self.options.callable)
        except ConfigError as exc:
            raise ConfigError(f"agent '{name}' (python): {exc}") from None

    def run(self, inv: AgentInvocation) -> AgentOutcome:
        task = inv.task.model_dump(mode="json")
        context = inv.context.model_dump(mode="json") if inv.context is not None else None
        try:
            result = self.fn(task, context, dict(inv.dependency_outputs))
        except (Exception, SystemExit) as exc:  # SystemExit: a stray sys.exit() must not stop the worker
            return AgentOutcome.fail(describe_exception(exc), transient=bool(getattr(exc, "transient", False)))
        if isinstance(result, AgentOutcome):
            return result
        return AgentOutcome.ok(result)


def import_callable(path: str) -> Callable[..., Any]:
    """``pkg.mod:fn``, ``pkg.mod:Class.method`` or dotted ``pkg.mod.fn``."""
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
    else:
        module_name, _, attr_path = path.rpartition(".")
    if not module_name or not attr_path:
        raise ConfigError(f"callable '{path}': expected 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"callable '{path}': cannot import module '{module_name}' ({exc})") from None
    except Exception as exc:  # the module itself raised while importing
        raise ConfigError(f"callable '{path}': importing '{module_name}' failed "
                          f"({describe_exception(exc)})") from None
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise ConfigError(f"callable '{path}': '{module_name}' has no attribute '{attr_path}'") from None
    if not callable(target):
        raise ConfigError(f"callable '{path}': {type(target).__name__} is not callable")
    return target
