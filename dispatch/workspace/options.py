"""The ``[workspace]`` options and a task's own ``workspace`` overrides, typed once.

The config file's section becomes ``WorkspaceOptions`` (a typo fails at planning time, as for
every other section); a task may override ``isolation``, ``setup`` and ``keep`` through its
``workspace`` key, and ``for_task`` is the one place that merges the two.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dispatch.config import format_validation_error
from dispatch.errors import InputError

Isolation = Literal["auto", "git", "shared"]


class WorkspaceOptions(BaseModel):
    """How tasks see the repository (``[workspace]`` in the config file)."""

    model_config = ConfigDict(extra="forbid")

    # auto: git when workspace_path is inside a git work tree, shared (one directory for all) otherwise
    isolation: Isolation = "auto"
    # start from this commit-ish instead of a snapshot of what the user sees
    base_ref: Optional[str] = None
    # argv run in each fresh checkout before the agent (e.g. ["npm", "ci"])
    setup: list[str] = Field(default_factory=list)
    setup_timeout_s: float = Field(default=600, gt=0)
    # gitignore-style globs of untracked files copied from the user's workspace (e.g. ".env")
    copy_untracked: list[str] = Field(default_factory=list)
    # leave each checkout on disk after the task (for debugging)
    keep: bool = False
    # a git remote every worker can reach (URL or path); None: workers read the user's repository
    remote: Optional[str] = None
    overlapping_writes: Literal["warn", "serialize", "error"] = "warn"
    # fail a task that changed files outside its declared writes
    enforce_writes: bool = False
    # the agent handed an integration conflict, by name
    resolver: Optional[str] = None
    # patches kept in results are cut to this many bytes (patch_bytes keeps the full size)
    patch_max_bytes: int = Field(default=64 * 1024, ge=0)
    # every git command is killed after this long (a hung remote never hangs a worker)
    git_timeout_s: float = Field(default=300, gt=0)

    @field_validator("remote")
    @classmethod
    def _no_password_in_remote(cls, remote: Optional[str]) -> Optional[str]:
        """The options travel in the run's state: a password in the URL would be saved with it."""
        if remote and "://" in remote and urlsplit(remote).password:
            raise ValueError("the remote URL holds a password, which would be saved with the run; "
                             "use ssh keys or a git credential helper instead")
        return remote


class TaskWorkspace(BaseModel):
    """What one task may override, from its ``workspace`` key."""

    model_config = ConfigDict(extra="forbid")

    isolation: Optional[Isolation] = None
    setup: Optional[list[str]] = None
    keep: Optional[bool] = None


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
