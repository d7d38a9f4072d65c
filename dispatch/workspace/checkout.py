"""A task's own checkout: a fresh ``git worktree`` of the worker's cache at the task's start commit.

The start commit is the run's base plus each dependency's change merged in dependency order
(``merging.start_commit``); when those changes conflict the task does not start
(``StartConflict``).  Then ``setup`` runs in the checkout and ``copy_untracked`` files (``.env``)
are copied from the user's workspace when this worker can read it; copied files are never
part of the task's change.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from dispatch.models import WorkspaceInfo
from dispatch.workspace.cache import Cache
from dispatch.workspace.errors import SetupFailed, StartConflict, WorkspaceUsageError
from dispatch.workspace.git import Git, ref_component, scrubbed_env, task_ref
from dispatch.workspace.merging import TouchedFiles, start_commit
from dispatch.workspace.options import WorkspaceOptions


@dataclass
class Checkout:
    """One task's checkout, from ``prepare_checkout`` to ``commit_checkout``."""

    run_id: str
    task_id: str
    path: Path  # the worktree's top level
    workdir: Path  # where the task runs: the workspace_path's place inside the checkout
    base: str  # the run's base
    start: str  # base plus the dependencies' changes
    cache: Cache
    subdir: str = ""
    # dependency task id -> the files its change touched (for the agent's prompt)
    dependency_changes: dict[str, list[str]] = field(default_factory=dict)
    copied: list[str] = field(default_factory=list)  # repo-relative paths copied by copy_untracked

    @property
    def git(self) -> Git:
        return Git(cwd=self.path, timeout=self.cache.git.timeout)


def source_of(info: WorkspaceInfo) -> str:
    """Where workers fetch from and push to: the remote, or the user's repository itself."""
    if info.isolation != "git" or not info.base or not info.base_ref:
        raise WorkspaceUsageError(f"run {info.run_id}: no git workspace was recorded (isolation {info.isolation})")
    source = info.remote or info.repo
    assert source, "a git WorkspaceInfo names its repository"
    return source


def prepare_checkout(info: WorkspaceInfo, task_id: str, dependencies: Sequence[tuple[str, str]],
                     options: WorkspaceOptions, *, cache_root: Optional[Path] = None) -> Checkout:
    """A fresh checkout for ``task_id``; ``dependencies`` are (task id, change commit) in topological order."""
    cache = Cache(source_of(info), cache_root, timeout=options.git_timeout_s)
    wanted = {info.base_ref: info.base, **{task_ref(info.run_id, dep): sha for dep, sha in dependencies}}
    cache.fetch(wanted)
    start, conflict = start_commit(cache.git, info.base, list(dependencies), task_id, info.run_id)
    if conflict is not None:
        raise StartConflict(task_id, *conflict)
    touched = TouchedFiles(cache.git)
    where = cache.checkouts_dir(ref_component(info.run_id))
    path = Path(tempfile.mkdtemp(prefix=f"{ref_component(task_id)}-", dir=where))
    cache.add_worktree(path, start)
    checkout = Checkout(run_id=info.run_id, task_id=task_id, path=path, workdir=path / info.subdir,
                        base=info.base, start=start, cache=cache, subdir=info.subdir,
                        dependency_changes={dep: touched.of(sha) for dep, sha in dependencies})
    try:
        checkout.workdir.mkdir(parents=True, exist_ok=True)
        if options.copy_untracked and info.repo:
            checkout.copied = copy_untracked(Path(info.repo), checkout, options.copy_untracked)
        if options.setup:
            run_setup(checkout, options)
    except BaseException:
        if not options.keep:
            remove_checkout(checkout)
        raise
    return checkout


def copy_untracked(repo: Path, checkout: Checkout, globs: Sequence[str]) -> list[str]:
    """Copy files matching ``globs`` (relative to the workspace) that the checkout lacks.

    Only when this worker can read the user's workspace: a worker on another machine has no
    such files, and ``setup`` is the way to make them there.
    """
    workspace = repo / checkout.subdir
    if not os.access(workspace, os.R_OK | os.X_OK):
        return []
    import pathspec

    spec = pathspec.GitIgnoreSpec.from_lines(globs)
    copied: list[str] = []
    for here, dirs, files in os.walk(workspace):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in files:
            source = Path(here) / name
            relative = source.relative_to(workspace).as_posix()
            if not spec.match_file(relative):
                continue
            target = checkout.workdir / relative
            if target.exists() or target.is_symlink():
                continue  # what the base holds wins over the user's copy
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
            copied.append((Path(checkout.subdir) / relative).as_posix() if checkout.subdir else relative)
    return copied


def run_setup(checkout: Checkout, options: WorkspaceOptions) -> None:
    try:
        proc = subprocess.run(options.setup, cwd=checkout.workdir, env=scrubbed_env(for_git=False),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=options.setup_timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise SetupFailed(options.setup, -1, f"timed out after {options.setup_timeout_s:g}s\n"
                          + (exc.output or b"").decode("utf-8", "replace")) from None
    except OSError as exc:
        raise SetupFailed(options.setup, -1, str(exc)) from None
    if proc.returncode != 0:
        raise SetupFailed(options.setup, proc.returncode, proc.stdout.decode("utf-8", "replace"))


def remove_checkout(checkout: Checkout) -> None:
    """Remove the worktree and its bookkeeping in the cache (whatever state the agent left it in)."""
    checkout.cache.remove_worktree(checkout.path)
