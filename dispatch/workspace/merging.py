"""Merging task changes in order, without a work tree: ``git merge-tree --write-tree`` (git >= 2.38).

A task's start commit (base plus its dependencies' changes) and the run's integration branch are
both "merge these task commits, in this order, onto that commit".  Doing it on trees alone keeps
it fast (no checkout of the repository per merge) and leaves nothing to clean up; only a
conflict handed to a resolver needs files on disk.  Each task's change is its one commit whose
parent is its start commit, so the files it touched are ``commit^..commit``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from dispatch.workspace.errors import GitError
from dispatch.workspace.git import Git, identity


@dataclass
class MergeStep:
    """The outcome of merging one commit: the new tip, or the conflicted files (tip unchanged)."""

    tip: str
    conflicts: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.conflicts


def merge_one(git: Git, current: str, commit: str, message: str) -> MergeStep:
    """``commit`` merged onto ``current``: nothing when already in, a fast-forward when possible."""
    if git.ok("merge-base", "--is-ancestor", commit, current):
        return MergeStep(current)
    if git.ok("merge-base", "--is-ancestor", current, commit):
        return MergeStep(commit)
    proc = git.run("merge-tree", "--write-tree", "--name-only", "-z", current, commit, ok=(0, 1))
    fields = proc.stdout.decode("utf-8", "replace").split("\0")
    tree = fields[0]
    if proc.returncode == 1:
        files: list[str] = []
        for name in fields[1:]:
            if not name:  # the empty entry ends the list of conflicted files
                break
            files.append(name)
        return MergeStep(current, list(dict.fromkeys(files)) or ["(unknown)"])
    return MergeStep(git.out("commit-tree", tree, "-p", current, "-p", commit, "-m", message, env=identity()))


def touched_files(git: Git, commit: str) -> list[str]:
    """The files a task's commit changed against its parent (its start commit)."""
    out = git.run("diff-tree", "-r", "--no-commit-id", "--name-only", "--no-renames", "-z",
                  f"{commit}^", commit).stdout.decode("utf-8", "replace")
    return [name for name in out.split("\0") if name]


class TouchedFiles:
    """Memoised ``touched_files``: a conflict names the merged tasks that changed the same files."""

    def __init__(self, git: Git) -> None:
        self.git = git
        self.by_commit: dict[str, list[str]] = {}

    def of(self, commit: str) -> list[str]:
        if commit not in self.by_commit:
            try:
                self.by_commit[commit] = touched_files(self.git, commit)
            except GitError:  # a root commit has no parent: it touched nothing we merged
                self.by_commit[commit] = []
        return self.by_commit[commit]

    def overlapping(self, merged: list[tuple[str, str]], files: list[str]) -> list[str]:
        wanted = set(files)
        return [task_id for task_id, commit in merged if wanted & set(self.of(commit))]


def start_commit(git: Git, base: str, dependencies: list[tuple[str, str]], task_id: str,
                 run_id: str) -> tuple[str, Optional[tuple[list[str], list[str]]]]:
    """The base plus each dependency's change in order; or the first conflict as (files, tasks)."""
    tip, merged = base, []
    touched = TouchedFiles(git)
    for dep_id, commit in dependencies:
        step = merge_one(git, tip, commit, f"dispatch run {run_id}: start of {task_id}, with {dep_id}")
        if not step.clean:
            return tip, (step.conflicts, [*touched.overlapping(merged, step.conflicts), dep_id])
        tip = step.tip
        merged.append((dep_id, commit))
    return tip, None
