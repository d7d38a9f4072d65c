"""The ``[workspace]`` options and a task's own ``workspace`` overrides, typed once.

The config file's section is ``WorkspaceOptions`` (defined with the rest of the config in
``dispatch.config``: a typo fails at planning time, as for every other section); a task may override ``isolation``, ``setup`` and ``keep`` through its
``workspace`` key, and ``for_task`` is the one place that merges the two.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dispatch.config import Isolation, TaskWorkspace, WorkspaceOptions, format_validation_error
from dispatch.errors import InputError

__all__ = ["Isolation", "TaskWorkspace", "WorkspaceOptions", "for_task", "task_overrides"]

def task_overrides(task: Any, where: str = "task") -> TaskWorkspace:
    """The task's ``workspace`` key, validated; ``where`` names it in the message (``tasks[2]``)."""
    extras = getattr(task, "model_extra", None) or {}
    raw = extras.get("workspace") if isinstance(extras, dict) else None
    if raw is None:
        return TaskWorkspace()
    if not isinstance(raw, dict):
        raise InputError(f"{where}.workspace: expected an object with isolation, setup or keep")
    try:
        return TaskWorkspace.model_validate(raw)
    except ValidationError as exc:
        raise InputError(f"{where}.workspace.{format_validation_error(exc)}") from None


def for_task(options: WorkspaceOptions, task: Any, where: str = "task") -> WorkspaceOptions:
    """The options one task runs with: the run's, with the task's own overrides on top."""
    overrides = task_overrides(task, where).model_dump(exclude_none=True)
    return options.model_copy(update=overrides) if overrides else options
