"""Many machines, for real: a ``git daemon`` on loopback is the remote, and two workers, each a
separate process with its own working directory, HOME and cache (``DISPATCH_GIT_CACHE``),
run tasks with dependencies across them.

When the suite runs as root (and ``setpriv`` and a system python3 exist), the workers run as
the user ``nobody`` and the user's workspace is mode 0700 owned by root: they cannot read it,
and each worker checks that it cannot.  Otherwise the workers run as the same user and are
given only the remote URL (the workspace path they receive does not exist).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dispatch.models import TaskChanges, TaskSpec, WorkspaceInfo
from dispatch.testing import NOBODY, SYSTEM_PYTHON, OtherUser, free_port
from dispatch.workspace import (WorkspaceError, WorkspaceOptions, apply_integration, commit_checkout, integrate,
                                prepare_checkout, snapshot_base)

from test_workspace import fingerprint, git, make_repo, show

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

WORKER = r"""
import json, os, sys
from dispatch.models import TaskSpec, WorkspaceInfo
from dispatch.workspace import WorkspaceOptions, commit_checkout, prepare_checkout

job = json.load(sys.stdin)
info = WorkspaceInfo.model_validate(job["info"])
try:
    os.listdir(info.repo)
    readable = True
except OSError:
    readable = False
options = WorkspaceOptions.model_validate(job["options"])
checkout = prepare_checkout(info, job["task"]["task_id"], [tuple(d) for d in job["deps"]], options)
seen = {name: (checkout.workdir / name).read_text() for name in job["expect"]}
for name, text in job["edits"].items():
    (checkout.workdir / name).write_text(text)
changes = commit_checkout(checkout, TaskSpec.model_validate(job["task"]), options)
print(json.dumps({"changes": changes.model_dump(mode="json"), "seen": seen, "workspace_readable": readable,
                  "uid": os.getuid(), "cache": str(checkout.cache.dir)}))
"""


def other_user_available() -> bool:
    return OtherUser().available("dispatch.workspace", "pydantic", "pathspec")


class Worker:
    """One worker machine: its own directory (cwd, HOME, cache), optionally its own user."""

    def __init__(self, name: str, as_nobody: bool) -> None:
        self.as_nobody = as_nobody
        self.home = Path(tempfile.mkdtemp(prefix=f"dispatch-{name}-"))
        if as_nobody:
            os.chown(self.home, NOBODY, NOBODY)

    def start(self, job: dict) -> subprocess.Popen:
        env = {"PATH": os.environ["PATH"], "HOME": str(self.home), "DISPATCH_GIT_CACHE": str(self.home / "cache"),
               "PYTHONPATH": OtherUser.pythonpath()}
        argv = [SYSTEM_PYTHON if self.as_nobody else sys.executable, "-c", WORKER]
        if self.as_nobody:
            argv = OtherUser().argv(*argv)
        proc = subprocess.Popen(argv, cwd=self.home, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        proc.stdin.write(json.dumps(job))
        proc.stdin.close()
        return proc

    def close(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    return json.loads(out)


@pytest.fixture
def git_daemon(tmp_path: Path):
    served = tmp_path / "served"
    subprocess.run(["git", "init", "-q", "--bare", str(served / "repo.git")], check=True)
    port = free_port()
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", f"--base-path={served}", "--export-all",
                               "--enable=receive-pack", f"--port={port}", "--listen=127.0.0.1", str(served)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"git://127.0.0.1:{port}/repo.git"
    deadline = time.monotonic() + 10
    while subprocess.run(["git", "ls-remote", url], capture_output=True).returncode != 0:
        assert daemon.poll() is None and time.monotonic() < deadline, "git daemon did not start"
        time.sleep(0.1)
    yield url
    daemon.terminate()
    daemon.wait(timeout=10)


def test_workers_that_cannot_read_the_workspace_build_on_each_other(tmp_path: Path, git_daemon: str):
    as_nobody = other_user_available()
    repo = make_repo(tmp_path / "user", {"calc.py": "def add(a, b):\n    return a + b\n"})
    (repo / "notes.txt").write_text("untracked, in the base\n")
    os.chmod(repo, 0o700)
    git(repo, "status")
    before = fingerprint(repo)
    options = WorkspaceOptions(remote=git_daemon)
    info = snapshot_base(repo, options, "cluster", distributed=True)
    sent = info if as_nobody else info.model_copy(update={"repo": str(tmp_path / "not-on-this-machine")})
    workers = [Worker("w1", as_nobody), Worker("w2", as_nobody)]
    try:
        def job(task_id, edits, deps=(), expect=()):
            return {"info": sent.model_dump(mode="json"), "options": options.model_dump(mode="json"),
                    "task": {"task_id": task_id, "agent": "shell", "description": f"task {task_id}",
                             "dependencies": [d for d, _ in deps]},
                    "deps": list(deps), "edits": edits, "expect": list(expect)}

        # a on w1 and b on w2, at the same time
        pa = workers[0].start(job("a", {"a.py": "A = 1\n"}, expect=["notes.txt"]))
        pb = workers[1].start(job("b", {"b.py": "B = 2\n"}))
        ra, rb = finish(pa), finish(pb)
        a, b = TaskChanges.model_validate(ra["changes"]), TaskChanges.model_validate(rb["changes"])
        # c on w2 depends on a (made on w1) and b (made on w2)
        rc = finish(workers[1].start(job("c", {"c.py": "C = 3\n"}, deps=[("a", a.commit), ("b", b.commit)],
                                         expect=["a.py", "b.py"])))
        c = TaskChanges.model_validate(rc["changes"])
    finally:
        for w in workers:
            w.close()

    for result in (ra, rb, rc):
        assert result["workspace_readable"] is False
        assert result["uid"] == (NOBODY if as_nobody else os.getuid())
    assert ra["seen"] == {"notes.txt": "untracked, in the base\n"}
    assert rc["seen"] == {"a.py": "A = 1\n", "b.py": "B = 2\n"}
    assert ra["cache"] != rb["cache"] == rc["cache"]
    assert [f.path for f in c.files] == ["c.py"]
    remote_refs = git(repo, "ls-remote", git_daemon)
    assert all(ref in remote_refs for ref in ("refs/dispatch/cluster/base", "refs/dispatch/cluster/tasks/a",
                                              "refs/dispatch/cluster/tasks/b", "refs/dispatch/cluster/tasks/c"))

    integration = integrate(info, [("a", a.commit), ("b", b.commit), ("c", c.commit)],
                            cache_root=tmp_path / "cli-cache")
    assert integration.merged == ["a", "b", "c"] and not integration.conflicts
    assert f"{integration.commit}\trefs/heads/dispatch/cluster" in git(repo, "ls-remote", git_daemon)
    # fetched back into the user's repository; nothing else of theirs moved
    assert show(repo, "dispatch/cluster", "c.py") == "C = 3\n"
    assert git(repo, "rev-parse", "refs/dispatch/cluster/tasks/a") == a.commit
    after = fingerprint(repo)
    assert after.pop("refs").replace(f"refs/heads/dispatch/cluster {integration.commit}\n", "") == before.pop("refs")
    assert after == before
    git(repo, "add", "notes.txt")
    git(repo, "commit", "-qm", "the user commits their notes")
    applied = apply_integration(repo, "cluster")
    assert applied.tasks == ["a", "b", "c"] and (repo / "c.py").read_text() == "C = 3\n"
    assert isinstance(info, WorkspaceInfo) and info.remote == git_daemon


def test_a_remote_that_is_down_keeps_the_agents_work(tmp_path: Path, git_daemon: str):
    repo = make_repo(tmp_path / "user", {"calc.py": "x = 1\n"})
    options = WorkspaceOptions(remote=git_daemon)
    info = snapshot_base(repo, options, "down")
    checkout = prepare_checkout(info, "t", [], options, cache_root=tmp_path / "cache")
    (checkout.workdir / "calc.py").write_text("x = 2\n")
    checkout.cache.source = f"git://127.0.0.1:{free_port()}/repo.git"  # the remote went away meanwhile
    with pytest.raises(WorkspaceError, match="checkout is kept at"):
        commit_checkout(checkout, TaskSpec(task_id="t", agent="shell", description="d"), options)
    assert (checkout.workdir / "calc.py").read_text() == "x = 2\n"
