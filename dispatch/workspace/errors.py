"""What can go wrong with a run's git workspace, as types the pipeline can tell apart.

A usage fault (not a repository, an unknown ``base_ref``, ``apply`` on a dirty tree) is exit 2
before anything happens; a ``StartConflict`` or ``SetupFailed`` fails one task (its dependents
are skipped as for any failure); a ``GitError`` is a git command that failed, with its stderr.
"""
from __future__ import annotations

from typing import Sequence

from dispatch.errors import DispatchError, UsageError


class WorkspaceError(DispatchError):
    """A git workspace operation failed (exit 1)."""


class WorkspaceUsageError(UsageError):
    """The workspace or the request cannot be used as asked (exit 2); the message says what to do."""


class GitError(WorkspaceError):
    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        self.git_args = list(args)
        self.returncode = returncode
        self.stderr = stderr.strip()
        tail = self.stderr.splitlines()[-3:] if self.stderr else []
        super().__init__(f"git {' '.join(self.git_args[:3])} failed (exit {returncode})"
                         + (": " + " / ".join(tail) if tail else ""))


class StartConflict(WorkspaceError):
    """The changes of a task's dependencies conflict with each other: the task cannot start."""

    def __init__(self, task_id: str, files: Sequence[str], tasks: Sequence[str]) -> None:
        self.task_id = task_id
        self.files = list(files)
        self.tasks = list(tasks)
        super().__init__(f"task '{task_id}' cannot start: the changes of its dependencies "
                         f"{', '.join(self.tasks)} conflict in {', '.join(self.files) or '(no file named)'}")


class SetupFailed(WorkspaceError):
    """The ``setup`` command failed in a fresh checkout."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        tail = " / ".join(output.strip().splitlines()[-5:])
        super().__init__(f"workspace setup {' '.join(self.argv)} failed (exit {returncode})"
                         + (f": {tail}" if tail else ""))
