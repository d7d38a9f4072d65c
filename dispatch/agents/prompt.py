"""The one place an agent's prompt is built.

Every kind that talks to a model or a coding-agent CLI uses this text (the
``llm`` kind as its user message, the ``shell`` kind as ``{prompt}``), and the
runner stores it in the ``TaskResult`` so a saved state shows exactly what each
agent was asked.  It is deterministic: the same inputs give the same text.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from dispatch.common.text import truncate
from dispatch.models import TaskContext, TaskSpec

# Dependencies' outputs can be large (a shell agent's stdout, an LLM's essay);
# the prompt keeps a fair share of each rather than letting one crowd out the rest.
DEPENDENCY_BUDGET_CHARS = 24_000
MIN_CHARS_PER_DEPENDENCY = 2_000


def build_prompt(task: TaskSpec, context: Optional[TaskContext], dependency_outputs: dict[str, Any],
                 user_prompt: str, request_extras: Optional[dict[str, Any]] = None) -> str:
    """User request (and its extra fields), task, input data, extra task fields,
    filtered context and dependencies' outputs, as Markdown sections; empty
    sections are left out."""
    parts: list[str] = []
    if user_prompt.strip():
        parts.append(f"# Request\n\n{user_prompt.strip()}")
    if request_extras:
        parts.append("## Additional request fields\n\n" + fenced(to_json(request_extras), "json"))
    parts.append(f"# Task: {task.task_id}\n\n{task.description.strip() or '(no description)'}")
    if task.input_data:
        parts.append("## Input data\n\n" + fenced(to_json(task.input_data), "json"))
    extras = dict(task.model_extra or {})
    if extras:  # unknown input keys reach the agent, never silently dropped
        parts.append("## Additional task fields\n\n" + fenced(to_json(extras), "json"))
    if context is not None and context.items:
        parts.append(_context_section(context))
    if dependency_outputs:
        parts.append(_dependency_section(dependency_outputs))
    return "\n\n".join(parts) + "\n"


def _context_section(context: TaskContext) -> str:
    lines = [f"## Context ({len(context.items)} items)"]
    for number, item in enumerate(context.items, 1):
        lines.append(f"### [{number}] {item.source}\n\n{fenced(item.content)}")
    return "\n\n".join(lines)


def _dependency_section(outputs: dict[str, Any]) -> str:
    per_dependency = max(MIN_CHARS_PER_DEPENDENCY, DEPENDENCY_BUDGET_CHARS // len(outputs))
    lines = ["## Outputs of dependencies"]
    for task_id in sorted(outputs):
        text = dependency_text(outputs[task_id])
        lines.append(f"### {task_id}\n\n{fenced(truncate(text, per_dependency, keep_tail=True))}")
    return "\n\n".join(lines)


def dependency_text(value: Any) -> str:
    """The substance of a dependency's output: the parsed JSON of an ``llm`` or
    ``shell`` agent that produced some, an ``llm`` answer's text, a ``shell`` run's
    stdout and collected files; anything else as JSON.  A model reading a prompt
    is better served by the program's output than by its envelope of exit codes
    and escaped newlines."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if "json" in value and ("exit_code" in value or "model" in value):
            return to_json(value["json"])
        if isinstance(value.get("text"), str) and "model" in value:
            return value["text"]
        if "exit_code" in value and isinstance(value.get("stdout"), str):
            parts = [value["stdout"].rstrip()]
            for file in value.get("files") or []:
                body = file.get("content")
                parts.append(f"--- {file.get('path')} ({file.get('size')} bytes)"
                             + (f"\n{body.rstrip()}" if isinstance(body, str) else ""))
            return "\n".join(p for p in parts if p)
    return to_json(value)


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def fenced(text: str, language: str = "") -> str:
    """A code fence longer than any backtick run inside ``text``, so content
    containing ``` cannot close the block early."""
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"
