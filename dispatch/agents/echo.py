"""``echo``: a deterministic agent for demos and tests.

It returns what it was given, so a test can see that dependencies' outputs and
filtered context really reached a task.  It never looks at the run id, the
attempt or the clock, so results are identical in embedded mode and on Redis.

Failure on demand (for tests of failure propagation): the option ``fail = true``
makes every task of that agent fail; ``"input_data": {"fail": true}`` makes one
task fail.  A string instead of ``true`` becomes the error message.
"""
from __future__ import annotations

from typing import Any, Union

from dispatch.agents.base import AGENTS, Agent, AgentInvocation, AgentOptions, AgentOutcome


class EchoOptions(AgentOptions):
    fail: Union[bool, str] = False


@AGENTS.register("echo")
class EchoAgent(Agent):
    edits_files = False  # answers only: no checkout needed
    Options = EchoOptions

    def run(self, inv: AgentInvocation) -> AgentOutcome:
        task = inv.task
        output = {
            "task_id": task.task_id,
            "agent": task.agent,
            "description": task.description,
            "input_data": task.input_data,
            "context_items": len(inv.context.items) if inv.context else 0,
            "dependencies": sorted(inv.dependency_outputs),
            "dependency_outputs": {k: _flat(v) for k, v in sorted(inv.dependency_outputs.items())},
        }
        fail = task.input_data.get("fail") or self.options.fail
        if fail:
            where = "input_data.fail" if task.input_data.get("fail") else f"agent '{self.name}' option fail"
            message = fail if isinstance(fail, str) else f"echo failed on request ({where})"
            return AgentOutcome.fail(message, output)
        return AgentOutcome.ok(output)

def _flat(value: Any) -> Any:
    """An upstream echo's own ``dependency_outputs`` are dropped (its ``dependencies``
    list stays), so a chain of N echoes stays one level deep instead of N."""
    if isinstance(value, dict) and "dependency_outputs" in value:
        return {k: v for k, v in value.items() if k != "dependency_outputs"}
    return value
