"""A worker's own bare copy of the repository, so a task's checkout needs no shared path.

One bare repository per source (the remote, or the user's repository when there is none) under
``DISPATCH_GIT_CACHE`` (default ``<DISPATCH_STATE_DIR>/git-cache``).  Each fetch asks only for
the run's refs a task needs, and only when their commits are missing (a dependency that ran on
the same worker costs nothing).  Fetches and pushes hold a file lock: several tasks of one worker
share the cache, and git's ref locks fail rather than wait.  Automatic gc is off, so a
concurrent task never sees objects vanish.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Optional

from dispatch.config import git_cache_root
from dispatch.workspace.errors import GitError, WorkspaceError
from dispatch.workspace.git import Git


def default_cache_root(environ: Optional[Mapping[str, str]] = None) -> Path:
    return git_cache_root(dict(environ) if environ is not None else None)


class Cache:
    """The bare cache of one source; ``git`` runs in it with hooks off."""

    def __init__(self, source: str, root: Optional[Path] = None, *, timeout: float = 300) -> None:
        self.source = source
        self.root = Path(root) if root is not None else default_cache_root()
        readable = re.sub(r"[^A-Za-z0-9._-]+", "-", source.rstrip("/").rsplit("/", 1)[-1])[:40] or "repo"
        self.dir = self.root / f"{readable}-{hashlib.sha1(source.encode()).hexdigest()[:12]}.git"
        self.git = Git(git_dir=self.dir, timeout=timeout, no_hooks=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.dir.with_suffix(".lock"), "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def ensure(self) -> None:
        """Create the bare repository on first use."""
        if (self.dir / "HEAD").is_file():
            return
        with self.locked():
            if (self.dir / "HEAD").is_file():
                return
            Git(timeout=self.git.timeout).run("init", "--quiet", "--bare", str(self.dir))
            for key, value in (("gc.auto", "0"), ("maintenance.auto", "false"), ("core.logAllRefUpdates", "false")):
                self.git.run("config", key, value)

    def fetch(self, wanted: Mapping[str, Optional[str]]) -> None:
        """Make the commits of ``wanted`` (ref -> expected commit, or None: whatever it is) present.

        A ref whose expected commit is already here is not fetched; a fetched ref whose commit is
        not the expected one means the run's refs were rewritten under it, which is an error.
        """
        self.ensure()
        missing = [ref for ref, sha in wanted.items() if not sha or not self.git.has_commit(sha)]
        if not missing:
            return
        with self.locked():
            missing = [ref for ref, sha in wanted.items() if not sha or not self.git.has_commit(sha)]
            if not missing:  # another task of this worker fetched them while we waited
                return
            try:
                self.git.run("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", self.source,
                             *[f"+{ref}:{ref}" for ref in missing])
            except GitError as exc:
                raise GitError(exc.git_args, exc.returncode, f"fetching {', '.join(missing)} from {self.source}: "
                               f"{exc.stderr}") from None
        for ref in missing:
            expected, got = wanted[ref], self.git.commit_of(ref)
            if expected and got != expected:
                raise WorkspaceError(f"{self.source}: {ref} is {got}, expected {expected} (rewritten during the run?)")

    def push(self, commit: str, ref: str) -> None:
        """Store ``commit`` on ``ref`` here and in the source (forced: a retried task replaces its ref)."""
        self.git.run("update-ref", ref, commit)
        with self.locked():
            try:
                self.git.run("push", "--quiet", "--no-verify", self.source, f"+{commit}:{ref}")
            except GitError as exc:
                raise GitError(exc.git_args, exc.returncode, f"pushing {ref} to {self.source}: {exc.stderr}") from None

    def add_worktree(self, path: Path, commit: str) -> None:
        """A detached worktree at ``commit``.

        Registering it (which briefly leaves a HEAD naming no object) holds the lock, since a
        concurrent fetch reads every worktree's HEAD; filling it with files does not.
        """
        with self.locked():
            self.git.run("worktree", "add", "--quiet", "--no-checkout", "--detach", str(path), commit)
        Git(cwd=path, timeout=self.git.timeout, no_hooks=True).run("reset", "--quiet", "--hard", commit)

    def remove_worktree(self, path: Path) -> None:
        """Delete the files (no lock), then drop the registration (under the lock, as ``add_worktree``)."""
        shutil.rmtree(path, ignore_errors=True)
        with self.locked():
            self.git.run("worktree", "prune", ok=(0, 1, 128))

    def checkouts_dir(self, run_id: str) -> Path:
        path = self.root / "checkouts" / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path
