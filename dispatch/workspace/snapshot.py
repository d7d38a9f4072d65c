"""The run's base commit, recorded at submission without touching what the user has.

By default the base is what the user sees: ``HEAD`` plus their uncommitted and untracked (not
ignored) files.  It is built through a temporary index (``GIT_INDEX_FILE``: a copy of theirs,
so unchanged files are not hashed again), ``write-tree`` and ``commit-tree``; the user's work
tree, index, branches and stash are never written (only new objects and the run's own ref
``refs/dispatch/<run_id>/base``).  A clean tree gives ``HEAD`` itself, not a new commit.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from dispatch.models import WorkspaceInfo
from dispatch.workspace.errors import GitError, WorkspaceUsageError
from dispatch.workspace.git import Git, identity, run_ref
from dispatch.workspace.options import WorkspaceOptions


def find_work_tree(path: str | Path, timeout: float = 60) -> Optional[Path]:
    """The top level of the git work tree holding ``path``, or None when it is in none."""
    where = Path(path).expanduser()
    if not where.is_dir():
        return None
    proc = Git(cwd=where, timeout=timeout).run("rev-parse", "--is-inside-work-tree", "--show-toplevel",
                                               ok=(0, 128))
    lines = proc.stdout.decode("utf-8", "replace").splitlines()
    if proc.returncode != 0 or len(lines) < 2 or lines[0] != "true":
        return None
    return Path(lines[1])


def resolve_isolation(workspace_path: str | Path, options: WorkspaceOptions) -> str:
    """``git`` or ``shared``: what ``auto`` means for this workspace (``git`` asked of a non-repo is exit 2)."""
    if options.isolation == "shared":
        return "shared"
    if find_work_tree(workspace_path, options.git_timeout_s) is not None:
        return "git"
    if options.isolation == "git":
        raise WorkspaceUsageError(
            f"workspace_path {workspace_path}: not inside a git work tree, but [workspace] isolation = \"git\"; "
            f"run `git init` there, or set isolation = \"shared\" (or \"auto\")")
    return "shared"


def snapshot_base(workspace_path: str | Path, options: WorkspaceOptions, run_id: str, *,
                  distributed: bool = False) -> WorkspaceInfo:
    """Record the run's base and store it on ``refs/dispatch/<run_id>/base`` (and on the remote).

    ``distributed``: workers may run on other machines; without a remote they could not reach
    the repository, so that is refused with what to configure.
    """
    if resolve_isolation(workspace_path, options) == "shared":
        return WorkspaceInfo(isolation="shared", run_id=run_id)
    top = find_work_tree(workspace_path, options.git_timeout_s)
    assert top is not None
    if distributed and not options.remote:
        raise WorkspaceUsageError(
            f"workspace_path {workspace_path} is a git repository and tasks run on distributed workers, "
            f"which cannot read it: set [workspace] remote = \"<url>\" to a git remote every worker can reach "
            f"(ssh://, https://, git:// or a path on shared storage), or [workspace] isolation = \"shared\"")
    git = Git(cwd=top, timeout=options.git_timeout_s)
    head = git.commit_of("HEAD")
    if options.base_ref:
        base = git.commit_of(options.base_ref)
        if base is None:
            raise WorkspaceUsageError(f"[workspace] base_ref '{options.base_ref}': names no commit in {top}")
        snapshot, source = False, options.base_ref
    else:
        base = snapshot_commit(git, head, run_id)
        snapshot, source = base != head, "worktree"
    ref = run_ref(run_id, "base")
    git.run("update-ref", "-m", f"dispatch run {run_id}: base", ref, base)
    if options.remote:
        push(git, options.remote, base, ref)
    subdir = Path(os.path.realpath(Path(workspace_path).expanduser())).relative_to(os.path.realpath(top))
    return WorkspaceInfo(isolation="git", run_id=run_id, repo=str(top),
                         subdir="" if subdir == Path(".") else subdir.as_posix(),
                         base=base, base_ref=ref, head=head, snapshot=snapshot, source=source,
                         remote=options.remote)


def snapshot_commit(git: Git, head: Optional[str], run_id: str) -> str:
    """HEAD plus every uncommitted and untracked-not-ignored file, as a commit (HEAD when clean)."""
    with tempfile.TemporaryDirectory(prefix="dispatch-index-") as tmp:
        index = Path(tmp) / "index"
        real = Path(git.out("rev-parse", "--git-path", "index"))
        real = real if real.is_absolute() else (git.cwd or Path.cwd()) / real
        if real.is_file():
            shutil.copyfile(real, index)  # stat data: only changed files are hashed
        env = {"GIT_INDEX_FILE": str(index)}
        git.run("add", "--all", "--", ":/", env=env)
        tree = git.out("write-tree", env=env)
    if head is not None and tree == git.out("rev-parse", f"{head}^{{tree}}"):
        return head
    parents = ["-p", head] if head else []
    return git.out("commit-tree", tree, *parents, "-m", f"dispatch run {run_id}: base\n\n"
                   "HEAD plus the uncommitted and untracked files at submission.", env=identity())


def push(git: Git, remote: str, commit: str, ref: str) -> None:
    """Store ``commit`` on ``ref`` in ``remote`` (forced: a re-run replaces its own refs)."""
    try:
        git.run("push", "--quiet", "--no-verify", remote, f"+{commit}:{ref}")
    except GitError as exc:
        raise GitError(exc.git_args, exc.returncode,
                       f"pushing {ref} to {remote}: {exc.stderr}") from None
