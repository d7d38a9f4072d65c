"""What a task changed, as one commit on the run's ref for it, and the result's ``changes``.

Everything in the checkout (tracked and new files, ``.gitignore`` honoured, ``copy_untracked``
files left out) is staged through a temporary index and committed with the start commit as its
only parent.  Commits the agent made itself (aider does) are squashed into that one commit: the
task's change is always ``start..commit``, which keeps integration and ``dispatch diff`` simple;
their subjects are listed in the message.  A failed task's partial change goes to
``refs/dispatch/<run_id>/failed/<task_id>``, never merged.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from dispatch.models import FileChange, TaskChanges
from dispatch.workspace.checkout import Checkout, remove_checkout
from dispatch.workspace.errors import WorkspaceError
from dispatch.workspace.git import Git, identity, task_ref
from dispatch.workspace.options import WorkspaceOptions


def commit_checkout(checkout: Checkout, task: Any, options: WorkspaceOptions, *,
                    succeeded: bool = True) -> TaskChanges:
    """Commit the task's change, push its ref, describe it, and remove the checkout unless ``keep``.

    When the change cannot be committed or pushed (a remote down), the checkout stays where it
    is and the error names it: the agent's work is never deleted before it is stored.
    """
    git = checkout.git
    try:
        commit = commit_tree_of(git, checkout, task, succeeded)
        ref = task_ref(checkout.run_id, checkout.task_id, failed=not succeeded)
        checkout.cache.push(commit, ref)
    except WorkspaceError as exc:
        raise WorkspaceError(f"{exc}; the task's checkout is kept at {checkout.path}") from exc
    try:
        files = numstat(git, checkout.start, commit)
        patch, size = capped_patch(git, checkout.start, commit, options.patch_max_bytes)
    finally:
        if not options.keep:
            remove_checkout(checkout)
    writes = list(getattr(task, "writes", None) or [])
    return TaskChanges(base=checkout.start, commit=commit, ref=ref, files=files, patch=patch, patch_bytes=size,
                       outside_scope=outside_scope(files, writes, checkout.subdir),
                       kept_checkout=str(checkout.path) if options.keep else None)


def commit_tree_of(git: Git, checkout: Checkout, task: Any, succeeded: bool) -> str:
    head = git.commit_of("HEAD")
    own_commits = ""
    if head and head != checkout.start:
        own_commits = git.out("log", "--format=%h %s", f"{checkout.start}..{head}")
    with tempfile.TemporaryDirectory(prefix="dispatch-index-") as tmp:
        index = Path(tmp) / "index"
        real = Path(git.out("rev-parse", "--git-path", "index"))
        real = real if real.is_absolute() else checkout.path / real
        if real.is_file():
            shutil.copyfile(real, index)  # stat data from the checkout: unchanged files are not hashed again
        env = {"GIT_INDEX_FILE": str(index)}
        excluded = [f":(exclude,top){path}" for path in not_ignored(git, checkout.copied)]
        git.run("add", "--all", "--", ":/", *excluded, env=env)
        tree = git.out("write-tree", env=env)
    description = str(getattr(task, "description", "") or "").strip()
    lines = [f"dispatch task {checkout.task_id}" + ("" if succeeded else " (failed: partial change)"), ""]
    if description:
        lines += [description, ""]
    if own_commits:
        lines += ["Squashed from the agent's own commits:", *own_commits.splitlines(), ""]
    lines += [f"Dispatch-Run: {checkout.run_id}", f"Dispatch-Task: {checkout.task_id}"]
    return git.out("commit-tree", tree, "-p", checkout.start, "-m", "\n".join(lines),
                   env=identity(checkout.task_id))


def not_ignored(git: Git, paths: list[str]) -> list[str]:
    """The paths ``.gitignore`` does not already keep out (excluding an ignored path is an error to git)."""
    if not paths:
        return []
    proc = git.run("check-ignore", "--stdin", "-z", input="\0".join(paths).encode() + b"\0", ok=(0, 1))
    ignored = set(filter(None, proc.stdout.decode("utf-8", "replace").split("\0")))
    return [p for p in paths if p not in ignored]


def numstat(git: Git, start: str, commit: str) -> list[FileChange]:
    """Per file: lines added and deleted (a binary file is 0/0 with ``binary``); renames as delete + add."""
    out = git.run("diff-tree", "-r", "--no-commit-id", "--numstat", "--no-renames", "-z",
                  start, commit).stdout.decode("utf-8", "replace")
    files = []
    for entry in out.split("\0"):
        if not entry:
            continue
        added, deleted, path = entry.split("\t", 2)
        binary = added == "-"
        files.append(FileChange(path=path, added=0 if binary else int(added),
                                deleted=0 if binary else int(deleted), binary=binary))
    return files


def capped_patch(git: Git, start: str, commit: str, cap: int) -> tuple[str, int]:
    """The unified diff ``start..commit``, cut at a line end within ``cap`` bytes, and its full size."""
    kept, size = git.head_of("diff-tree", "-p", "--no-color", "--no-renames", "--no-ext-diff",
                             start, commit, cap=cap)
    if size > len(kept) and b"\n" in kept:
        kept = kept[: kept.rindex(b"\n") + 1]
    return kept.decode("utf-8", "replace"), size


def outside_scope(files: list[FileChange], writes: list[str], subdir: str = "") -> list[str]:
    """Changed files no ``writes`` glob covers (globs are relative to the workspace; none declared: none)."""
    if not writes:
        return []
    import pathspec

    spec = pathspec.GitIgnoreSpec.from_lines(writes)
    outside = []
    for change in files:
        path = PurePosixPath(change.path)
        relative: Optional[str]
        if subdir:
            try:
                relative = path.relative_to(subdir).as_posix()
            except ValueError:
                relative = None  # outside the workspace altogether
        else:
            relative = path.as_posix()
        if relative is None or not spec.match_file(relative):
            outside.append(change.path)
    return outside


def scope_fault(changes: TaskChanges, options: WorkspaceOptions) -> Optional[str]:
    """The message that fails a task under ``enforce_writes``, or None."""
    if not options.enforce_writes or not changes.outside_scope:
        return None
    return "changed files outside its declared writes: " + ", ".join(changes.outside_scope)
