"""Git workspaces on a cluster, through the whole pipeline: a real Redis, two real ``celery worker``
processes running as another user (their own cwd, HOME and git cache) that cannot read the user's
0700 workspace, and ``[workspace] remote`` served by a real ``git daemon``.

Two tasks edit different files on different workers; a dependent, on either, checks that its
checkout holds both.  The CLI (as the user) fetches the integration branch into the user's
repository at the end; their working tree, index and HEAD are not touched.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import base_env, run_cli
from dispatch.testing import NOBODY, OtherUser, WorkerPool

from test_workspace import fingerprint, git, make_repo, show
from test_workspace_remote import git_daemon  # noqa: F401 - the fixture

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(180)]
USER = OtherUser()

# writes one file after a pause (so the two writers overlap and land on different workers) and
# reports who it ran as and whether it could read the user's workspace
WRITE = """import json, os, sys, time
time.sleep(1.5)
open(sys.argv[1], "w").write(sys.argv[2] + "\\n")
try:
    os.listdir(sys.argv[3]); readable = True
except OSError:
    readable = False
print(json.dumps({"uid": os.getuid(), "cwd": os.getcwd(), "workspace_readable": readable}))
"""
# the dependent: both dependencies' files must be in its checkout, then it adds its own
CHECK = """import json, os, sys
seen = {name: open(name).read() if os.path.exists(name) else None for name in ("a.txt", "b.txt")}
open("c.txt", "w").write("C\\n")
print(json.dumps({"uid": os.getuid(), "seen": seen}))
sys.exit(0 if all(seen.values()) else 3)
"""


@pytest.fixture
def cluster(redis_server, tmp_path: Path):
    if not USER.available("dispatch.runtime.worker", "celery", "redis"):
        pytest.skip("needs root, setpriv and a system python3 that can import this venv's packages "
                    "(the workers run as the user nobody)")
    prefix = f"dispatch-test-{tmp_path.name}"
    env = base_env(tmp_path, DISPATCH_BROKER_URL=redis_server.url, DISPATCH_KEY_PREFIX=prefix)
    pool = WorkerPool(env, tmp_path)
    homes: list[Path] = []

    def start(name: str) -> Path:
        home = USER.home(f"dispatch-{name}-")
        homes.append(home)
        pool.start(name, user=USER, home=home, concurrency=1, env={
            "DISPATCH_BROKER_URL": redis_server.url, "DISPATCH_KEY_PREFIX": prefix,
            "DISPATCH_STATE_DIR": str(home / "state"), "DISPATCH_GIT_CACHE": str(home / "cache")})
        return home

    yield {"env": env, "start": start}
    pool.stop_all()
    for home in homes:
        shutil.rmtree(home, ignore_errors=True)


def test_workers_as_another_user_build_on_each_other_through_a_git_remote(cluster, tmp_path: Path,
                                                                       git_daemon: str) -> None:  # noqa: F811
    repo = make_repo(tmp_path / "user" / "repo", {"README.md": "# the user's project\n"})
    (repo / "notes.txt").write_text("the user's uncommitted notes\n")
    os.chmod(repo, 0o700)
    before = fingerprint(repo)
    homes = [cluster["start"]("w1"), cluster["start"]("w2")]
    # the workers' user really cannot read the workspace (nor, so, the user's .git)
    probe = subprocess.run(USER.argv("ls", str(repo)), capture_output=True, text=True, cwd="/")
    assert probe.returncode != 0 and "Permission denied" in probe.stderr

    config = tmp_path / "cluster.json"
    config.write_text(json.dumps({
        "workspace": {"remote": git_daemon},
        "agents": {"write": {"kind": "shell", "command": ["python3", "-c", WRITE, "{input.file}", "{input.text}",
                                                          str(repo)]},
                   "check": {"kind": "shell", "command": ["python3", "-c", CHECK]}}}))
    tasks = {"workspace_path": str(repo), "tasks": [
        {"task_id": "a", "agent": "write", "description": "write a.txt", "input_data": {"file": "a.txt", "text": "A"}},
        {"task_id": "b", "agent": "write", "description": "write b.txt", "input_data": {"file": "b.txt", "text": "B"}},
        {"task_id": "c", "agent": "check", "description": "check a.txt and b.txt, write c.txt",
         "dependencies": ["a", "b"]}]}
    run = run_cli(["--config", str(config)], stdin=json.dumps(tasks), env=cluster["env"], cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = run.json
    run_id = out["run_id"]
    results = {r["task_id"]: r for r in out["results"]}
    assert all(r["success"] for r in results.values()), results

    # each task's change, made as the other user, on its own ref
    for task_id, name in (("a", "a.txt"), ("b", "b.txt"), ("c", "c.txt")):
        changes = results[task_id]["changes"]
        assert [(f["path"], f["added"], f["deleted"]) for f in changes["files"]] == [(name, 1, 0)], changes
        assert changes["ref"] == f"refs/dispatch/{run_id}/tasks/{task_id}"
    reports = {t: json.loads(results[t]["output"]["stdout"]) for t in results}
    assert {r["uid"] for r in reports.values()} == {NOBODY}
    assert reports["a"]["workspace_readable"] is False and reports["b"]["workspace_readable"] is False
    assert all(not r["cwd"].startswith(str(repo)) for r in (reports["a"], reports["b"]))  # their own checkouts
    # a and b ran at the same time on the two workers, so c (on one of them) built on the other's change
    workers = {t: results[t]["worker"].split("@")[0] for t in results}
    assert workers["a"] != workers["b"], workers
    assert reports["c"]["seen"] == {"a.txt": "A\n", "b.txt": "B\n"}
    assert all((home / "cache").is_dir() for home in homes)

    # the integration branch came back into the user's repository, with all three changes
    integration = out["integration"]
    assert integration["merged"] == ["a", "b", "c"] and integration["conflicts"] == []
    branch = f"dispatch/{run_id}"
    assert git(repo, "rev-parse", f"refs/heads/{branch}") == integration["commit"]
    assert [show(repo, branch, n) for n in ("a.txt", "b.txt", "c.txt", "notes.txt")] == [
        "A\n", "B\n", "C\n", "the user's uncommitted notes\n"]  # notes.txt: the base is what the user saw
    assert git(repo, "rev-parse", f"refs/dispatch/{run_id}/tasks/a") == results["a"]["changes"]["commit"]
    remote = git(repo, "ls-remote", git_daemon)
    assert f"{integration['commit']}\trefs/heads/{branch}" in remote and f"refs/dispatch/{run_id}/base" in remote
    # the user's working tree, index, HEAD and other branches are as they were
    after = fingerprint(repo)
    assert after.pop("refs").replace(f"refs/heads/{branch} {integration['commit']}\n", "") == before.pop("refs")
    assert after == before
