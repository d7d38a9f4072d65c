"""Deployments sharing one Redis are isolated, phase tasks delivered twice run once, and workers accept only
dispatch's own tasks for runs that exist (real Redis, real workers)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from conftest import WorkerPool, run_cli
from test_faults import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(150)]


def logging_agents(tmp_path: Path, sleep_s: float = 0.0) -> Path:
    """A config whose agent appends its task id to a log on every execution."""
    log = tmp_path / "executions.log"
    config = tmp_path / "agents.json"
    config.write_text(json.dumps({"agents": {"logged": {
        "kind": "shell", "command": ["sh", "-c", f"sleep {sleep_s}; echo {{task_id}} >> {log}; echo ran"]}}}))
    return config


def executions(tmp_path: Path) -> list[str]:
    path = tmp_path / "executions.log"
    return path.read_text().split() if path.exists() else []


def test_two_deployments_on_one_redis_never_consume_each_others_messages(distributed, tmp_path):
    env_a = distributed["env"]
    env_b = {**env_a, "DISPATCH_KEY_PREFIX": "deployment-b", "DISPATCH_STATE_DIR": str(tmp_path / "b")}
    distributed["workers"].start("alpha", concurrency=2)
    pool_b = WorkerPool(env_b, tmp_path / "b-logs")
    (tmp_path / "b-logs").mkdir()
    pool_b.start("beta", concurrency=2)
    try:
        tasks = json.dumps({"tasks": [{"task_id": f"t{i}", "agent": "echo", "description": "x"} for i in range(8)]})
        run_a = run_cli([], stdin=tasks, env=env_a)
        run_b = run_cli([], stdin=tasks, env=env_b)
        assert run_a.returncode == 0 and run_b.returncode == 0, (run_a.stderr, run_b.stderr)
        assert {r["worker"].split("@")[0] for r in run_a.json["results"]} == {"alpha"}
        assert {r["worker"].split("@")[0] for r in run_b.json["results"]} == {"beta"}
        client = redis.Redis.from_url(distributed["redis"].url)
        keys = [k.decode() for k in client.keys("*")]
        prefix_a = distributed["prefix"]
        assert keys and all(k.startswith((f"{prefix_a}:", "deployment-b:")) for k in keys), \
            [k for k in keys if not k.startswith((f"{prefix_a}:", "deployment-b:"))]
        listed_b = run_cli(["runs", "--json"], env=env_b)
        assert run_a.json["run_id"] not in listed_b.stdout and run_b.json["run_id"] in listed_b.stdout
    finally:
        pool_b.stop_all()


def test_a_phase_4_task_delivered_twice_runs_every_agent_once_and_closes_once(distributed, tmp_path):
    """A second delivery of phase 4 (its worker died after sending the chord, before acking) joins the
    phase under way: its chord of duplicates ends early and stores nothing; the first one closes the run."""
    from dispatch.config import Settings
    from dispatch.runtime.app import create_app
    from dispatch.store import Deployment

    env = distributed["env"]
    distributed["workers"].start("w", concurrency=4)
    config = logging_agents(tmp_path, sleep_s=1.5)
    tasks = [{"task_id": "a", "agent": "logged", "description": "x"},
             {"task_id": "b", "agent": "logged", "description": "y"},
             {"task_id": "c", "agent": "logged", "description": "z", "dependencies": ["a", "b"]}]
    submitted = run_cli(["--config", str(config), "--no-wait"], stdin=json.dumps({"tasks": tasks}), env=env)
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.json["run_id"]
    settings = Settings.from_env(env)
    app = create_app(settings)
    deployment = Deployment(settings, app.backend.client)
    ledger = deployment.ledger(run_id)
    wait_for(lambda: any(label.startswith("agent:") for label in ledger.tasks().values()), 30)
    phase_4 = next(cid for cid, label in ledger.tasks().items() if label == "phase_4")
    stored = deployment.store.load(run_id)
    assert stored.status == "running"
    # the same message again: same task id, the state reference it was sent with (phase 4 has saved once since)
    app.signature("dispatch.phase_4_parallel_execution", args=({"run_id": run_id, "version": stored.version - 1},),
                  queue=f"{distributed['prefix']}.phases").apply_async(task_id=phase_4)
    followed = run_cli(["wait", run_id], env=env, timeout=90)
    assert followed.returncode == 0, followed.stderr
    out = followed.json
    assert [r["success"] for r in out["results"]] == [True, True, True], out["results"]
    assert sorted(executions(tmp_path)) == ["a", "b", "c"]  # each agent ran once


def test_workers_refuse_builtin_tasks_and_messages_for_unknown_runs(distributed, tmp_path):
    from dispatch.config import Settings
    from dispatch.runtime.app import create_app

    env = distributed["env"]
    worker = distributed["workers"].start("w", concurrency=2)
    settings = Settings.from_env(env)
    app = create_app(settings)
    client = redis.Redis.from_url(distributed["redis"].url)
    before = set(client.keys("*"))
    agents, phases = f"{distributed['prefix']}.agents", f"{distributed['prefix']}.phases"
    app.signature("celery.backend_cleanup", queue=phases).apply_async()
    app.signature("dispatch.agent", args=("no-such-run", "t1"), queue=agents).apply_async()
    app.signature("dispatch.phase_2_task_planning", args=({"run_id": "no-such-run", "version": 1},),
                  queue=phases).apply_async()
    log = tmp_path / "w.log"
    wait_for(lambda: "no-such-run" in log.read_text() and "backend_cleanup" in log.read_text(), 30)
    time.sleep(1)
    text = log.read_text()
    assert "Received unregistered task of type 'celery.backend_cleanup'" in text
    assert "ignored an agent message for run no-such-run" in text
    assert "ignored a phase message for run no-such-run" in text
    created = {k.decode() for k in set(client.keys("*")) - before}
    assert not [k for k in created if ":dag:" in k or ":tasks:" in k or ":run:" in k], created
    assert worker.poll() is None
