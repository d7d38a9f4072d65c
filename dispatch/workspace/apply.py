"""``dispatch apply`` and ``dispatch diff``: the only operations that touch the user's branch, on request.

``apply_integration`` merges ``dispatch/<run_id>`` into the current branch, refusing on a dirty
tree and, before touching anything, refusing a merge that would conflict (``merge-tree`` tells
without a work tree), so the user is never left mid-merge by dispatch.  ``task_patch`` is the
patch of one task (its commit against its start) or of the whole integration (against the base).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from dispatch.models import FileChange
from dispatch.workspace.changes import numstat
from dispatch.workspace.errors import WorkspaceError, WorkspaceUsageError
from dispatch.workspace.git import Git, integration_branch, run_ref, task_ref
from dispatch.workspace.snapshot import find_work_tree


@dataclass
class Applied:
    """What ``apply_integration`` merged into the current branch."""

    branch: str  # the user's branch (or "HEAD" when detached)
    integration: str  # dispatch/<run_id>
    before: str
    after: str
    fast_forward: bool
    tasks: list[str] = field(default_factory=list)  # the task ids whose commits came in
    files: list[FileChange] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.before != self.after


def user_repo(repo: str | Path, timeout: float) -> Git:
    top = find_work_tree(repo, timeout)
    if top is None:
        raise WorkspaceUsageError(f"{repo}: not inside a git work tree")
    return Git(cwd=top, timeout=timeout)


def integration_tip(git: Git, run_id: str) -> str:
    branch = integration_branch(run_id)
    tip = git.commit_of(branch)
    if tip is None:
        raise WorkspaceUsageError(
            f"run {run_id}: no branch {branch.removeprefix('refs/heads/')} in {git.cwd}: the run has not integrated "
            f"yet, or its remote was not fetched (git fetch <remote> +{branch}:{branch})")
    return tip


def apply_integration(repo: str | Path, run_id: str, *, timeout: float = 300) -> Applied:
    """Merge the run's integration branch into the current branch of ``repo``."""
    git = user_repo(repo, timeout)
    tip = integration_tip(git, run_id)
    short = integration_branch(run_id).removeprefix("refs/heads/")
    dirty = git.out("status", "--porcelain", "--untracked-files=no")
    if dirty:
        listed = ", ".join(line[3:] for line in dirty.splitlines()[:5])
        raise WorkspaceUsageError(f"refusing to apply run {run_id}: {git.cwd} has uncommitted changes ({listed}); "
                                  f"commit or stash them first")
    before = git.commit_of("HEAD")
    if before is None:
        raise WorkspaceUsageError(f"refusing to apply run {run_id}: the current branch has no commit yet")
    branch = git.run("symbolic-ref", "--quiet", "--short", "HEAD", ok=(0, 1)).stdout.decode().strip() or "HEAD"
    if git.ok("merge-base", "--is-ancestor", tip, before):
        return Applied(branch, short, before, before, fast_forward=False)
    probe = git.run("merge-tree", "--write-tree", "--name-only", "-z", before, tip, ok=(0, 1))
    if probe.returncode == 1:
        files = [f for f in probe.stdout.decode("utf-8", "replace").split("\0\0")[0].split("\0")[1:] if f]
        raise WorkspaceError(f"{short} conflicts with {branch} in {', '.join(files)}; nothing was changed. "
                             f"Merge it by hand: git merge {short}")
    fast_forward = git.ok("merge-base", "--is-ancestor", before, tip)
    git.run("merge", "--quiet", "--no-edit", "-m", f"Merge dispatch run {run_id}", short)
    after = git.out("rev-parse", "HEAD")
    return Applied(branch, short, before, after, fast_forward, tasks=tasks_between(git, before, tip),
                   files=numstat(git, before, after))


def tasks_between(git: Git, before: str, tip: str) -> list[str]:
    """The tasks the integration brought in, in merge order.

    The integration's first-parent chain has one commit per merged task (its own commit when
    it fast-forwarded, else the merge commit), each with a ``Dispatch-Task`` trailer.
    """
    out = git.out("log", "--first-parent", "--reverse",
                  "--format=%(trailers:key=Dispatch-Task,valueonly,separator=%x00)", tip, f"^{before}")
    return list(dict.fromkeys(t.strip() for line in out.splitlines() for t in line.split("\0") if t.strip()))


def task_patch(repo: str | Path, run_id: str, task_id: Optional[str] = None, *, timeout: float = 300) -> str:
    """The patch of ``task_id`` (succeeded or failed), or of the whole integration against the base."""
    git = user_repo(repo, timeout)
    if task_id is None:
        tip = integration_tip(git, run_id)
        base = git.commit_of(run_ref(run_id, "base"))
        if base is None:
            raise WorkspaceUsageError(f"run {run_id}: no base ref {run_ref(run_id, 'base')} in {git.cwd}")
        return git.run("diff-tree", "-p", "--no-color", "--no-ext-diff", base, tip).stdout.decode("utf-8", "replace")
    for ref in (task_ref(run_id, task_id), task_ref(run_id, task_id, failed=True)):
        commit = git.commit_of(ref)
        if commit is not None:
            return git.run("diff-tree", "-p", "--no-color", "--no-ext-diff", f"{commit}^", commit
                           ).stdout.decode("utf-8", "replace")
    raise WorkspaceUsageError(f"run {run_id}: task '{task_id}' has no change recorded in {git.cwd} "
                              f"(neither {task_ref(run_id, task_id)} nor the failed ref)")
