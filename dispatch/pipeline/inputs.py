"""Reading the task breakdown: JSON text to a validated ``DispatchInput``.

Every fault becomes an ``InputError`` naming where it is (line and column for
malformed JSON, ``tasks[2].dependencies`` for graph faults) so the CLI can exit
2 before anything is submitted.
"""
from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from dispatch.config import format_validation_error
from dispatch.errors import InputError
from dispatch.models import DispatchInput
from dispatch.planning.graph import GraphError, check_graph


def parse_input(text: str, source: str = "stdin") -> DispatchInput:
    if not text.strip():
        raise InputError(f"{source}: no input (expected a JSON task breakdown with a 'tasks' list)")
    try:
        raw: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    return validate_input(raw, source)


def validate_input(raw: Any, source: str = "input") -> DispatchInput:
    if not isinstance(raw, dict):
        raise InputError(f"{source}: expected a JSON object with a 'tasks' list, got {type(raw).__name__}")
    if "tasks" not in raw:
        raise InputError(f"{source}: tasks: field required (a list of {{task_id, agent, description}})")
    if isinstance(raw.get("tasks"), list) and not raw["tasks"]:
        raise InputError(f"{source}: tasks: the list is empty; nothing to dispatch")
    try:
        request = DispatchInput.model_validate(raw)
    except ValidationError as exc:
        raise InputError(f"{source}: {format_validation_error(exc)}") from None
    try:
        check_graph(request.tasks)
    except GraphError as exc:
        raise InputError(f"{source}: {exc}") from None
    return request


def input_json_schema() -> dict[str, Any]:
    """JSON Schema of the input, for ``dispatch schema``."""
    schema = DispatchInput.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "dispatch task breakdown"
    return schema
