"""Git workspaces through the whole pipeline, on fresh repositories (embedded and on Redis with workers):
no edit silently lost, dependents build on their dependencies' work, one integration branch, and the
user's working tree untouched."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.timeout(180)

CALC = "def add(a, b):\n    return a + b\n"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "dev@example.com")
    git(path, "config", "user.name", "Dev")
    (path / "calc.py").write_text(CALC)
    (path / "README").write_text("a repo\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "start")
    (path / "notes.txt").write_text("uncommitted, untracked\n")  # what the user sees is the base
    return path


def config(tmp: Path) -> Path:
    """``edit``: appends a function to the file its task names (read, think half a second, write)."""
    script = ('import sys, time, pathlib; p = pathlib.Path(sys.argv[1]); text = p.read_text(); time.sleep(0.5); '
              'p.write_text(text + "\\n\\ndef " + sys.argv[2] + "():\\n    return 1\\n")')
    check = 'import pathlib, sys; t = pathlib.Path("calc.py").read_text(); sys.exit(0 if all(f"def {n}(" in t for n in sys.argv[1:]) else 3)'
    path = tmp / "agents.json"
    path.write_text(json.dumps({"agents": {
        "edit": {"kind": "shell", "command": ["python3", "-c", script, "{input.file}", "{input.name}"]},
        "check": {"kind": "shell", "command": ["python3", "-c", check, "mul", "sub"]}}}))
    return path


def tasks(repo: Path, *specs: dict) -> str:
    return json.dumps({"workspace_path": str(repo), "tasks": list(specs)})


def edit(task_id: str, file: str, name: str, deps=()) -> dict:
    return {"task_id": task_id, "agent": "edit", "description": f"add {name} to {file}",
            "input_data": {"file": file, "name": name}, "dependencies": list(deps)}


def test_two_tasks_editing_one_file_in_parallel_lose_nothing(cli, tmp_path):
    repo = make_repo(tmp_path / "repo")
    status_before, head_before = git(repo, "status", "--porcelain"), git(repo, "rev-parse", "HEAD")
    run = cli("--config", str(config(tmp_path)), stdin=tasks(repo, edit("mul", "calc.py", "mul"),
                                                             edit("sub", "calc.py", "sub")))
    out = run.json
    assert git(repo, "status", "--porcelain") == status_before and git(repo, "rev-parse", "HEAD") == head_before
    results = {r["task_id"]: r for r in out["results"]}
    assert all(r["success"] for r in results.values()), results
    for name in ("mul", "sub"):
        changes = results[name]["changes"]
        assert [f["path"] for f in changes["files"]] == ["calc.py"] and changes["files"][0]["added"] >= 3
        assert f"def {name}()" in git(repo, "show", f"{changes['commit']}:calc.py")  # on its own ref, kept
        assert changes["ref"] == f"refs/dispatch/{out['run_id']}/tasks/{name}"
    integration = out["integration"]
    merged_file = git(repo, "show", f"{integration['ref']}:calc.py")
    if integration["conflicts"]:  # the same spot of one file: reported, never silently dropped
        assert run.returncode == 1
        [conflict] = integration["conflicts"]
        assert conflict["files"] == ["calc.py"] and conflict["with"] and conflict["task_id"] in ("mul", "sub")
        assert "integration" in out["error"]
    else:
        assert run.returncode == 0 and "def mul()" in merged_file and "def sub()" in merged_file


def test_a_dependent_builds_on_both_dependencies_and_the_integration_holds_all(cli, tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / "other.py").write_text("X = 1\n")
    git(repo, "add", "other.py")
    git(repo, "commit", "-q", "-m", "other")
    run = cli("--config", str(config(tmp_path)), stdin=tasks(
        repo, edit("mul", "calc.py", "mul"), edit("sub", "other.py", "sub"),
        {"task_id": "both", "agent": "edit", "description": "builds on mul and sub",
         "input_data": {"file": "calc.py", "name": "both"}, "dependencies": ["mul", "sub"]}))
    assert run.returncode == 0, run.stderr
    out = run.json
    results = {r["task_id"]: r for r in out["results"]}
    assert [f["path"] for f in results["both"]["changes"]["files"]] == ["calc.py"]  # only its own change
    both = results["both"]["changes"]["commit"]
    assert "def mul()" in git(repo, "show", f"{both}:calc.py") and "def sub()" in git(repo, "show", f"{both}:other.py")
    integration = out["integration"]
    assert integration["merged"] == ["mul", "sub", "both"] and integration["conflicts"] == []
    merged = git(repo, "show", f"{integration['ref']}:calc.py")
    assert "def mul()" in merged and "def both()" in merged
    assert "notes.txt" in git(repo, "ls-tree", "--name-only", integration["ref"])  # the base had it
    assert "+" in run.stderr and "calc.py" in run.stderr  # the summary names the files changed

    shown = cli("diff", out["run_id"], "both", cwd=repo)
    assert shown.returncode == 0 and "+def both():" in shown.stdout
    (repo / "notes.txt").unlink()  # apply refuses a dirty tree; make it clean first
    applied = cli("apply", out["run_id"], cwd=repo)
    assert applied.returncode == 0, applied.stderr
    assert "def both()" in (repo / "calc.py").read_text()


@pytest.mark.redis
@pytest.mark.slow
def test_on_redis_a_repository_without_a_remote_is_refused_with_what_to_set(distributed, tmp_path):
    repo = make_repo(tmp_path / "repo")
    run = run_cli(["--config", str(config(tmp_path))], stdin=tasks(repo, edit("mul", "calc.py", "mul")),
                  env=distributed["env"])
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "remote" in run.stderr


def test_overlapping_declared_writes_are_warned_serialized_or_refused(cli, tmp_path):
    both = [{"task_id": "a", "agent": "echo", "description": "x", "writes": ["src/calc.py"]},
            {"task_id": "b", "agent": "echo", "description": "y", "writes": ["src/**"]},
            {"task_id": "c", "agent": "echo", "description": "z", "writes": ["docs/**"]}]
    warned = cli(stdin=json.dumps({"tasks": both}))
    assert warned.returncode == 0 and "tasks 'a' and 'b' may both write" in warned.stderr
    for policy, code in (("serialize", 0), ("error", 2)):
        conf = tmp_path / f"{policy}.toml"
        conf.write_text(f'[workspace]\noverlapping_writes = "{policy}"\n')
        run = cli("--config", str(conf), stdin=json.dumps({"tasks": both}))
        assert run.returncode == code, run.stderr
        if policy == "serialize":
            plan = run.json["phases_executed"][2]["output_data"]
            assert plan["levels"] == 2 and "Ordered 'b' after 'a'" in run.stderr
        else:
            assert "overlapping_writes" in run.stderr and run.stdout == ""


def test_a_resolver_agent_completes_a_conflicting_merge(cli, tmp_path):
    repo = make_repo(tmp_path / "repo")
    conf = json.loads(config(tmp_path).read_text())
    # keeps both sides of every conflict: drops the marker lines
    fix = ('import pathlib; p = pathlib.Path("calc.py"); '
           'p.write_text("".join(l for l in p.read_text().splitlines(True) '
           'if not l.startswith(("<<<<<<<", "=======", ">>>>>>>"))))')
    conf["agents"]["fixer"] = {"kind": "shell", "command": ["python3", "-c", fix]}
    path = tmp_path / "with-resolver.json"
    path.write_text(json.dumps({**conf, "workspace": {"resolver": "fixer"}}))
    run = cli("--config", str(path), stdin=tasks(repo, edit("mul", "calc.py", "mul"), edit("sub", "calc.py", "sub")))
    assert run.returncode == 0, run.stderr
    integration = run.json["integration"]
    assert integration["conflicts"] == [] and sorted(integration["merged"]) == ["mul", "sub"]
    assert len(integration["resolved"]) == 1  # the two appends to one spot did conflict: the resolver ran
    merged = git(repo, "show", f"{integration['ref']}:calc.py")
    assert "def mul()" in merged and "def sub()" in merged and "<<<<<<<" not in merged
    bad = tmp_path / "bad-resolver.json"
    bad.write_text(json.dumps({**conf, "workspace": {"resolver": "nobody"}}))
    refused = cli("--config", str(bad), stdin=tasks(repo, edit("mul", "calc.py", "mul")))
    assert refused.returncode == 2 and "workspace.resolver" in refused.stderr


def test_the_report_shows_each_tasks_diff_and_the_integration(cli, tmp_path):
    repo = make_repo(tmp_path / "repo")
    run = cli("--config", str(config(tmp_path)), stdin=tasks(repo, edit("mul", "calc.py", "mul")))
    assert run.returncode == 0, run.stderr
    page = tmp_path / "r.html"
    assert cli("report", run.json["run_id"], "-o", str(page)).returncode == 0
    html = page.read_text()
    assert 'id="changes"' in html and "+def mul():" in html and f"dispatch/{run.json['run_id']}" in html
