"""The run's one integration branch: every succeeded task's change on the base, in topological order.

Merges happen on trees (``merging.merge_one``).  A task whose change conflicts with what is
already merged is left out, named with its files and the merged tasks it collides with; so is a
task that builds on a left-out (or dropped) task, since its commit carries that change.  Nothing
is lost: every task keeps its own ref.  An optional resolver gets a scratch checkout holding the
conflicted merge; its result completes the merge only when no conflict marker remains.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from dispatch.models import Integration, IntegrationConflict, WorkspaceInfo
from dispatch.workspace.cache import Cache
from dispatch.workspace.checkout import source_of
from dispatch.workspace.git import Git, identity, integration_branch, ref_component, run_ref, task_ref
from dispatch.workspace.merging import TouchedFiles, merge_one

# (checkout holding the conflicted merge, the conflict) -> True when it resolved it
Resolver = Callable[[Path, IntegrationConflict], bool]
MARKER = re.compile(rb"^(<{7}|>{7})(?: |$)", re.MULTILINE)


def integrate(info: WorkspaceInfo, succeeded: Sequence[tuple[str, str]], resolver: Optional[Resolver] = None, *,
              excluded: Sequence[tuple[str, str]] = (), cache_root: Optional[Path] = None,
              timeout: float = 300) -> Integration:
    """Merge ``succeeded`` ((task id, change commit) in topological order, ties by input order) onto
    the base into ``refs/heads/dispatch/<run_id>``, push it, and fetch it back when there is a remote.

    ``excluded``: changes kept out on purpose (dropped at the checkpoint); their dependents are left
    out too.
    """
    cache = Cache(source_of(info), cache_root, timeout=timeout)
    # the excluded changes too: a dependent that carries one is told apart by ancestry
    cache.fetch({info.base_ref: info.base, **{task_ref(info.run_id, t): sha for t, sha in [*succeeded, *excluded]}})
    git, touched = cache.git, TouchedFiles(cache.git)
    tip = info.base
    merged: list[tuple[str, str]] = []
    resolved: list[str] = []
    conflicts: list[IntegrationConflict] = []
    dropped = [t for t, _ in excluded]
    left_out = [(t, sha) for t, sha in excluded if git.has_commit(sha)]
    for task_id, commit in succeeded:
        if task_id in dropped:  # a dropped change is not merged, whatever the caller passed
            continue
        carried = [t for t, sha in left_out if git.ok("merge-base", "--is-ancestor", sha, commit)]
        if carried:
            reason = f"builds on {', '.join(carried)}, which is not in the integration"
            conflicts.append(IntegrationConflict(task_id=task_id, files=[], with_=carried, reason=reason))
            left_out.append((task_id, commit))
            continue
        step = merge_one(git, tip, commit, f"dispatch run {info.run_id}: merge task {task_id}\n\n"
                                           f"Dispatch-Run: {info.run_id}\nDispatch-Task: {task_id}")
        if step.clean:
            tip = step.tip
            merged.append((task_id, commit))
            continue
        colliding = touched.overlapping(merged, step.conflicts)
        reason = f"conflicts with the merged change of {', '.join(colliding) or 'earlier tasks'}"
        conflict = IntegrationConflict(task_id=task_id, files=step.conflicts, with_=colliding, reason=reason)
        done = resolve(cache, info.run_id, tip, commit, conflict, resolver) if resolver else None
        if done:
            tip = done
            merged.append((task_id, commit))
            resolved.append(task_id)
        else:
            conflicts.append(conflict)
            left_out.append((task_id, commit))
    branch = integration_branch(info.run_id)
    cache.push(tip, branch)
    if info.remote and info.repo and os.access(info.repo, os.R_OK | os.W_OK | os.X_OK):
        fetch_run_refs(Path(info.repo), info.remote, info.run_id, timeout=timeout)
    return Integration(ref=branch, commit=tip, base=info.base, merged=[t for t, _ in merged], resolved=resolved,
                       conflicts=conflicts, dropped=dropped)


def resolve(cache: Cache, run_id: str, tip: str, commit: str, conflict: IntegrationConflict,
            resolver: Resolver) -> Optional[str]:
    """Hand the conflicted merge to ``resolver`` in a scratch checkout; the merge commit, or None."""
    path = Path(tempfile.mkdtemp(prefix=f"resolve-{ref_component(conflict.task_id)}-",
                                 dir=cache.checkouts_dir(ref_component(run_id))))
    cache.add_worktree(path, tip)
    work = Git(cwd=path, timeout=cache.git.timeout, no_hooks=True)
    try:
        work.run("merge", "--no-ff", "--no-commit", "--no-verify", commit, ok=(0, 1), env=identity())
        try:
            if not resolver(path, conflict):
                conflict.reason += "; the resolver did not resolve it"
                return None
        except Exception as exc:  # noqa: BLE001 - a broken resolver leaves the conflict reported, not the run lost
            conflict.reason += f"; the resolver failed: {exc}"
            return None
        head = work.commit_of("HEAD")
        if head != tip and head is not None:  # the resolver committed by itself: its tree is the result
            tree = work.out("rev-parse", f"{head}^{{tree}}")
        else:
            work.run("add", "--all", "--", ":/")
            tree = work.out("write-tree")
        marked = files_with_markers(work, tip, tree)
        if marked:
            conflict.reason += f"; conflict markers remain in {', '.join(marked)}"
            return None
        return work.out("commit-tree", tree, "-p", tip, "-p", commit, "-m",
                        f"dispatch run {run_id}: merge task {conflict.task_id} (conflict resolved)\n\n"
                        f"Dispatch-Run: {run_id}\nDispatch-Task: {conflict.task_id}\nDispatch-Resolved: yes",
                        env=identity())
    finally:
        cache.remove_worktree(path)


def files_with_markers(git: Git, tip: str, tree: str) -> list[str]:
    """Files changed from ``tip`` to ``tree`` that still hold a conflict marker line."""
    names = git.run("diff-tree", "-r", "--name-only", "--no-renames", "-z", "--diff-filter=AM", tip, tree)
    marked = []
    for name in filter(None, names.stdout.decode("utf-8", "replace").split("\0")):
        blob = git.run("cat-file", "blob", f"{tree}:{name}").stdout
        if MARKER.search(blob):
            marked.append(name)
    return marked


def fetch_run_refs(repo: Path, remote: str, run_id: str, *, timeout: float = 300) -> None:
    """Bring the run's refs and its integration branch from ``remote`` into the user's repository."""
    git = Git(cwd=repo, timeout=timeout)
    refspecs = [f"+{run_ref(run_id)}/*:{run_ref(run_id)}/*"]
    branch = integration_branch(run_id)
    if git.out("ls-remote", remote, branch):
        refspecs.append(f"+{branch}:{branch}")
    git.run("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", remote, *refspecs)
