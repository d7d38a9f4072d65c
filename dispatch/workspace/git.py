"""Every git command dispatch runs goes through ``Git``: a timeout, a clean environment, no prompt.

Why plain ``git`` subprocesses rather than GitPython: everything here is plumbing (``commit-tree``,
``merge-tree --write-tree``, ``update-ref``, ``worktree``, fetch/push by refspec) that GitPython
would only wrap as ``repo.git.<command>`` strings anyway, while we need a timeout on every call
(a hung remote must not hang a worker) and an environment scrubbed of ``GIT_DIR`` and friends
(a worker started from a git hook, or the CLI run inside one, must never aim at the wrong
repository).  ``git`` itself is the well-kept library.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from dispatch.workspace.errors import GitError

# GIT_* variables that say how to reach a remote or which config to read, not which repository to use
KEEP_GIT_ENV = frozenset({
    "GIT_SSH", "GIT_SSH_COMMAND", "GIT_SSH_VARIANT", "GIT_ASKPASS", "GIT_PROXY_COMMAND",
    "GIT_SSL_NO_VERIFY", "GIT_SSL_CAINFO", "GIT_SSL_CAPATH", "GIT_SSL_CERT", "GIT_SSL_KEY",
    "GIT_HTTP_USER_AGENT", "GIT_HTTP_LOW_SPEED_LIMIT", "GIT_HTTP_LOW_SPEED_TIME",
    "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "GIT_CONFIG_NOSYSTEM", "GIT_EXEC_PATH",
    # the user's identity for the one commit made in their name (``dispatch apply``'s merge)
    "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL",
})
COMMITTER = {"GIT_COMMITTER_NAME": "dispatch", "GIT_COMMITTER_EMAIL": "dispatch@dispatch.invalid"}
SAFE_REF_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def scrubbed_env(extra: Optional[Mapping[str, str]] = None, *, for_git: bool = True) -> dict[str, str]:
    """The process environment without the GIT_* variables that redirect git to another repository."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in KEEP_GIT_ENV}
    if for_git:
        env["GIT_TERMINAL_PROMPT"] = "0"  # a remote asking for a password fails instead of waiting
        env["LC_ALL"] = "C"  # messages we parse stay in English
    env.update(extra or {})
    return env


def identity(task_id: Optional[str] = None) -> dict[str, str]:
    """Author (the task, when there is one) and committer for the commits dispatch makes."""
    name = f"dispatch task {task_id}" if task_id else "dispatch"
    email = f"{ref_component(task_id)}@dispatch.invalid" if task_id else "dispatch@dispatch.invalid"
    return {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, **COMMITTER}


def ref_component(name: str) -> str:
    """``name`` as one valid ref component: task ids are free text, refs are not.

    Ids made of letters, digits, ``.``, ``_`` and ``-`` are kept as they are (the common case,
    and readable in ``git log``); anything else is replaced and a short hash of the original keeps
    two different ids from landing on one ref.
    """
    safe = SAFE_REF_CHARS.sub("_", name).strip(".") or "_"
    if safe.endswith(".lock"):
        safe = safe[: -len(".lock")] + "_lock"
    safe = safe.replace("..", "._")
    if safe != name:
        safe += "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return safe


def run_ref(run_id: str, *parts: str) -> str:
    """``refs/dispatch/<run_id>/<parts...>``."""
    return "/".join(["refs/dispatch", ref_component(run_id), *parts])


def task_ref(run_id: str, task_id: str, *, failed: bool = False) -> str:
    return run_ref(run_id, "failed" if failed else "tasks", ref_component(task_id))


def integration_branch(run_id: str) -> str:
    return f"refs/heads/dispatch/{ref_component(run_id)}"


@dataclass(frozen=True)
class Git:
    """git aimed at one repository: ``cwd`` (a work tree) or ``git_dir`` (a bare cache)."""

    cwd: Optional[Path] = None
    git_dir: Optional[Path] = None
    timeout: float = 300
    no_hooks: bool = False  # the cache's own commands run no hook, whatever the global config says

    def argv(self, args: Sequence[str]) -> list[str]:
        cmd = ["git", "-c", "core.quotePath=false"]
        if self.no_hooks:
            cmd += ["-c", "core.hooksPath=/dev/null"]
        if self.git_dir is not None:
            cmd += ["--git-dir", str(self.git_dir)]
        return cmd + list(args)

    def run(self, *args: str, input: Optional[bytes] = None, env: Optional[Mapping[str, str]] = None,
            ok: Sequence[int] = (0,), cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
        """Run ``git args``; an exit code not in ``ok`` (or the timeout) raises ``GitError``."""
        try:
            proc = subprocess.run(self.argv(args), cwd=cwd or self.cwd, input=input, capture_output=True,
                                  env=scrubbed_env(env), timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise GitError(args, -1, f"timed out after {self.timeout:g}s") from None
        except FileNotFoundError:
            raise GitError(args, -1, "the git executable was not found on PATH") from None
        if proc.returncode not in ok:
            raise GitError(args, proc.returncode, proc.stderr.decode("utf-8", "replace"))
        return proc

    def out(self, *args: str, **kwargs) -> str:
        """The command's stdout as text, without the trailing newline."""
        return self.run(*args, **kwargs).stdout.decode("utf-8", "replace").strip("\n")

    def ok(self, *args: str, **kwargs) -> bool:
        """True when the command exits 0, False when it exits 1 (``--verify``, ``--is-ancestor``)."""
        return self.run(*args, ok=(0, 1), **kwargs).returncode == 0

    def head_of(self, *args: str, cap: int) -> tuple[bytes, int]:
        """The first ``cap`` bytes of the command's stdout and its full size, without holding it all."""
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen(self.argv(args), cwd=self.cwd, stdout=subprocess.PIPE, stderr=errors,
                                    env=scrubbed_env())
            timer = threading.Timer(self.timeout, proc.kill)  # a read that never ends still ends
            timer.start()
            kept, total = bytearray(), 0
            try:
                assert proc.stdout is not None
                for chunk in iter(lambda: proc.stdout.read(1 << 16), b""):
                    total += len(chunk)
                    if len(kept) < cap:
                        kept += chunk[: cap - len(kept)]
                code = proc.wait()
            finally:
                timer.cancel()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if code != 0:
                errors.seek(0)
                message = errors.read().decode("utf-8", "replace") or f"killed after {self.timeout:g}s"
                raise GitError(args, code, message)
        return bytes(kept), total

    def commit_of(self, rev: str) -> Optional[str]:
        """The commit ``rev`` names, or None when it names none here."""
        proc = self.run("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}", ok=(0, 1, 128))
        return proc.stdout.decode().strip() or None if proc.returncode == 0 else None

    def has_commit(self, sha: str) -> bool:
        return self.run("cat-file", "-e", f"{sha}^{{commit}}", ok=(0, 1, 128)).returncode == 0
