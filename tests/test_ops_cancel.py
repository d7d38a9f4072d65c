"""dispatch cancel / resume / runs against real Redis and real prefork workers."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from conftest import run_cli
from test_faults import finish, start_cli, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(90)]


def step_config(path: Path, seconds: float) -> Path:
    path.write_text(json.dumps({"agents": {"step": {"kind": "shell", "command": ["sleep", str(seconds)]}}}))
    return path


def test_cancel_revokes_a_running_run_then_resume_finishes_it_under_the_same_id(distributed, tmp_path):
    env = distributed["env"]
    distributed["workers"].start("pf", pool="prefork", concurrency=2)
    slow = step_config(tmp_path / "slow.json", 20)
    tasks = json.dumps({"tasks": [{"task_id": f"t{i}", "agent": "step", "description": "wait"} for i in range(5)],
                        "config": {"max_workers": 2}})
    follower = start_cli(env, ["--config", str(slow)], tasks)
    client = redis.Redis.from_url(distributed["redis"].url)
    prefix = distributed["prefix"]
    wait_for(lambda: len(client.keys(f"{prefix}:tasks:*")) == 1, what="the run to be submitted")
    run_id = client.keys(f"{prefix}:tasks:*")[0].decode().rsplit(":", 1)[1]
    worker_log = tmp_path / "pf.log"
    wait_for(lambda: worker_log.read_text().count("Task dispatch.agent:") >= 2, what="two agent tasks to start")
    time.sleep(0.5)

    t0 = time.monotonic()
    cancelled = run_cli(["cancel", run_id], env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    outcome = cancelled.json
    assert outcome["run_id"] == run_id and outcome["status"] == "cancelled"
    assert outcome["previous_status"] == "running" and outcome["revoked"] >= 5  # 3 phases + 2 agents
    followed = finish(follower, timeout=30)
    assert time.monotonic() - t0 < 15, "running tasks were not terminated"
    assert followed.returncode == 1, followed.stderr
    out = json.loads(followed.stdout)
    assert out["status"] == "cancelled" and not out["success"]
    assert f"run {run_id} was cancelled" in followed.stderr and "Traceback" not in followed.stderr
    assert not any(r["success"] for r in out["results"]) and len(out["results"]) == 5
    wait_for(lambda: "Terminating" in worker_log.read_text(), timeout=5, what="the worker to terminate tasks")
    assert run_cli(["show", "--json", run_id], env=env).json["status"] == "cancelled"
    rows = {r["run_id"]: r for r in run_cli(["runs", "--json"], env=env).json["runs"]}
    assert rows[run_id]["status"] == "cancelled" and rows[run_id]["phases"] == [2, 3, 4]
    assert client.ttl(f"{prefix}:cancel:{run_id}") > 0

    again = run_cli(["cancel", run_id], env=env)  # idempotent
    assert again.returncode == 0 and again.json["previous_status"] == "cancelled"
    refused = run_cli(["resume", run_id, "--skip-phases", "4"], env=env)
    assert refused.returncode == 2 and "no phase left to run" in refused.stderr

    fast = step_config(tmp_path / "fast.json", 0.1)
    resumed = run_cli(["resume", run_id, "--config", str(fast)], env=env)
    assert resumed.returncode == 0, resumed.stderr
    final = resumed.json
    assert final["run_id"] == run_id and final["status"] == "succeeded"
    assert sorted(r["task_id"] for r in final["results"]) == [f"t{i}" for i in range(5)]
    assert all(r["success"] for r in final["results"])
    assert not client.exists(f"{prefix}:cancel:{run_id}")
    done = run_cli(["cancel", run_id], env=env)
    assert done.returncode == 2 and "already succeeded" in done.stderr


def test_cancel_and_resume_refuse_clearly(distributed, tmp_path):
    env = distributed["env"]
    missing = run_cli(["cancel", "20990101-000000-00000000"], env=env)
    assert missing.returncode == 2 and "no run '20990101-000000-00000000'" in missing.stderr
    distributed["workers"].start("w")
    submitted = run_cli(["--no-wait", "--stop-after-phase", "3"],
                        stdin=json.dumps({"tasks": [{"task_id": "a", "agent": "echo", "description": "d"}]}), env=env)
    run_id = submitted.json["run_id"]
    wait_for(lambda: run_cli(["show", "--json", run_id], env=env).json["status"] == "succeeded", what="phase 3")
    resumed = run_cli(["resume", run_id, "--no-wait"], env=env)
    assert resumed.returncode == 0 and resumed.json == {"run_id": run_id, "status": "submitted", "phases": [4]}
    wait_for(lambda: run_cli(["show", "--json", run_id], env=env).json["status"] == "succeeded"
             and run_cli(["show", "--json", run_id], env=env).json["task_results"], what="phase 4")
