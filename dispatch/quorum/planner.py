"""The planner: on RETRY, a model rewrites the breakdown to fix the deficiencies.

This closes the loop the reference system only had outside the runner.  The
planner is configured as ``[planner] kind = "openai" | "anthropic"`` plus the
provider client's options (``provider`` may be given explicitly instead).  Its
answer must be ``{"tasks": [...]}``; the new breakdown replaces the old one only
if every task is a valid ``TaskSpec`` and the graph checks pass, otherwise the
caller keeps the previous breakdown and records why.

The answer's schema is the request's own (``tasks_schema``): ``agent`` is one of
the agents the run can resolve and the list has at most ``max_tasks`` tasks
(option; default twice the current breakdown, at least 8).  A server that
constrains output to the schema (llama.cpp) then cannot produce an unknown agent
or a list that runs on until ``max_tokens`` cuts it off, which is what small
models otherwise do; an answer cut off all the same is refused as such.
"""
from __future__ import annotations

import copy
import json
from typing import Any, Optional, Sequence

from pydantic import BaseModel, Field, ValidationError

from dispatch.config import ComponentConfig, format_validation_error
from dispatch.errors import ConfigError
from dispatch.models import DispatchInput, TaskSpec, Usage
from dispatch.common.providers import make_client
from dispatch.common.spend import call_usage
from dispatch.common.text import extract_json
from dispatch.quorum.graph import graph_faults
from dispatch.quorum.prompt import breakdown_json

SYSTEM_PROMPT = """\
You revise task breakdowns for a pipeline that runs each task as an AI agent, in parallel.
Reviewers found deficiencies in the breakdown below. Write a corrected breakdown that
accomplishes the user's request and fixes every deficiency. Keep the tasks that were fine,
with their task_id. Each task: task_id (unique), agent, description (specific, imperative),
input_data (object), context_requirements (list of strings), dependencies (task_ids that
must finish first; no cycles). Use only these agents: {agents}.

Answer with one JSON object and nothing else: {{"tasks": [ ... ]}}"""

TASKS_SCHEMA = {
    "title": "task_breakdown",
    "type": "object",
    "properties": {"tasks": {"type": "array", "minItems": 1, "items": {
        "type": "object",
        "properties": {
            "task_id": {"type": "string", "minLength": 1}, "agent": {"type": "string", "minLength": 1},
            "description": {"type": "string", "minLength": 1},
            "input_data": {"type": "object"},
            "context_requirements": {"type": "array", "items": {"type": "string"}},
            "dependencies": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["task_id", "agent", "description"]}}},
    "required": ["tasks"],
}


MIN_MAX_TASKS = 8


class PlannerError(Exception):
    """The planner's breakdown cannot be used; the message says why."""


def tasks_schema(agents: Sequence[str], max_tasks: int) -> dict[str, Any]:
    """``TASKS_SCHEMA`` for one request: its agents as an enum, at most ``max_tasks`` tasks."""
    schema = copy.deepcopy(TASKS_SCHEMA)
    tasks = schema["properties"]["tasks"]
    tasks["maxItems"] = max_tasks
    if agents:
        tasks["items"]["properties"]["agent"] = {"type": "string", "enum": list(agents)}
    return schema


class _Breakdown(BaseModel):
    tasks: list[TaskSpec] = Field(min_length=1)


def parse_breakdown(text: str) -> list[TaskSpec]:
    """Tasks from a planner answer, checked as phase 2 would check them."""
    try:
        data = extract_json(text)
    except ValueError as exc:
        raise PlannerError(f"unparseable answer: {exc}") from None
    try:
        tasks = _Breakdown.model_validate({"tasks": data.get("tasks")}).tasks
    except ValidationError as exc:
        raise PlannerError(format_validation_error(exc)) from None
    faults = graph_faults(tasks)
    if faults:
        raise PlannerError("; ".join(faults[:3]) + (f" (and {len(faults) - 3} more)" if len(faults) > 3 else ""))
    return tasks


class Planner:
    def __init__(self, component: ComponentConfig, known_agents: Optional[set[str]] = None,
                 configured_agents: Sequence[str] = (), shared_cache: Any = None,
                 prices: Optional[dict[str, Any]] = None) -> None:
        options = component.options
        self.prices = prices or {}
        self.usage = Usage()  # every revision asked, priced (phase 1's spend counts them)
        provider = options.get("provider") or component.kind
        self.max_tasks = options.get("max_tasks")
        if self.max_tasks is not None and (isinstance(self.max_tasks, bool) or not isinstance(self.max_tasks, int)
                                           or self.max_tasks < 1):
            raise ConfigError(f"planner.max_tasks: must be a positive integer (got {self.max_tasks!r})")
        try:
            self.client = make_client({"temperature": 0.2, **options, "provider": provider},
                                      shared_cache=shared_cache)
        except ConfigError as exc:
            raise ConfigError(f"planner.{exc}") from None
        self.known_agents = known_agents
        self.configured_agents = list(configured_agents)

    def agent_names(self, request: DispatchInput) -> list[str]:
        """The agents a revision may use: those the run can resolve; when the caller did not say, the
        configured ones and those the breakdown already uses."""
        if self.known_agents is not None:
            return sorted(self.known_agents)
        return sorted(set(self.configured_agents) | {t.agent for t in request.tasks})

    def task_limit(self, request: DispatchInput) -> int:
        return self.max_tasks or max(MIN_MAX_TASKS, 2 * len(request.tasks))

    def regenerate(self, request: DispatchInput, deficiencies: Sequence[str]) -> list[TaskSpec]:
        """A new breakdown addressing ``deficiencies``; ``PlannerError``/``ProviderError`` otherwise."""
        listed = "\n".join(f"- {d}" for d in deficiencies) or "- (none listed; improve alignment with the request)"
        message = (f"User request:\n{request.user_prompt.strip() or '(none given)'}\n\n"
                   f"Current breakdown (JSON):\n{breakdown_json(request)}\n\n"
                   f"Deficiencies to fix:\n{listed}")
        # typed at an interactive checkpoint's retry (dispatch/interactive.py)
        feedback = str((request.model_extra or {}).get("quorum_feedback") or "").strip()
        if feedback:
            message += f"\n\nFeedback from the person reviewing this breakdown:\n{feedback}"
        agents = self.agent_names(request)
        system = SYSTEM_PROMPT.format(agents=", ".join(agents))
        reply = self.client.complete(system, [{"role": "user", "content": message}],
                                     json_schema=tasks_schema(agents, self.task_limit(request)))
        model = self.client.options.model
        self.usage = self.usage + call_usage(model if isinstance(model, str) else None, reply.input_tokens,
                                             reply.output_tokens, self.prices)
        if reply.cut_off:
            raise PlannerError(f"the answer was cut off after {reply.output_tokens or 'max'} tokens "
                               f"(raise [planner] max_tokens, or lower max_tasks)")
        return parse_breakdown(reply.text)

    def close(self) -> None:
        self.client.close()


def describe_change(old: Sequence[TaskSpec], new: Sequence[TaskSpec]) -> str:
    """``3 tasks (was 2): +a, -b`` for the log."""
    before, after = {t.task_id for t in old}, {t.task_id for t in new}
    added = [t.task_id for t in new if t.task_id not in before]
    removed = [t.task_id for t in old if t.task_id not in after]
    changes = [f"+{tid}" for tid in added] + [f"-{tid}" for tid in removed]
    unchanged = json.dumps([t.model_dump(mode="json") for t in old], sort_keys=True) == \
        json.dumps([t.model_dump(mode="json") for t in new], sort_keys=True)
    detail = "unchanged" if unchanged else (", ".join(changes) if changes else "tasks rewritten")
    return f"{len(new)} tasks (was {len(old)}): {detail}"
