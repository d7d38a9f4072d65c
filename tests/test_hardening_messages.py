"""Issue 14, item 16's leftovers: tasks a cancel stopped while they ran say so, and a visibility timeout
shorter than an agent's time limit is warned about (worker start, CLI submit) on a Redis broker."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from conftest import run_cli
from dispatch.config import Settings
from dispatch.models import PhaseState, TaskSpec
from dispatch.pipeline.execution import CANCELLED_RUNNING, NOT_RUN, collect_results
from dispatch.runtime.visibility import run_warning, worker_warning
from test_faults import finish, start_cli, wait_for


def test_collect_results_tells_running_from_never_started():
    state = PhaseState(run_id="r", tasks_data=[TaskSpec(task_id=t, agent="echo", description=t) for t in "abc"])
    results = {r.task_id: r for r in collect_results(state, {}, running={"a"})}
    assert results["a"].skipped and results["a"].error == CANCELLED_RUNNING
    assert results["b"].error == f"skipped: {NOT_RUN}"


def test_the_visibility_warning_names_both_figures_and_only_on_redis(tmp_path):
    state = PhaseState(run_id="r", selected_phases=[2, 3, 4],
                       tasks_data=[TaskSpec(task_id="a", agent="echo", description="a")])
    short = Settings(broker_url="redis://127.0.0.1:1/0", visibility_timeout_s=60)
    warning = run_warning(short, state)
    assert warning and "visibility timeout (60s" in warning and "(310s)" in warning  # 300 s + 10 s of grace
    assert run_warning(Settings(broker_url="redis://127.0.0.1:1/0"), state) is None  # 2 h by default
    assert run_warning(Settings(), state) is None  # embedded: no visibility timeout
    assert run_warning(Settings(broker_url="amqp://127.0.0.1//", visibility_timeout_s=60), state) is None
    state.selected_phases = [2, 3]
    assert run_warning(short, state) is None  # no agent runs
    config = tmp_path / "agents.json"
    config.write_text(json.dumps({"agents": {"long": {"kind": "shell", "command": ["true"], "timeout_s": 9000}}}))
    on_worker = worker_warning(Settings(broker_url="redis://127.0.0.1:1/0", config_file=str(config)))
    assert on_worker and "(9010s)" in on_worker


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(90)
def test_worker_start_and_submit_warn_of_a_short_visibility_timeout(distributed, tmp_path):
    env = {**distributed["env"], "DISPATCH_VISIBILITY_TIMEOUT_S": "60"}
    distributed["workers"].env = env
    distributed["workers"].start("w1")
    assert "visibility timeout (60s" in (tmp_path / "w1.log").read_text()
    submitted = run_cli(["--no-wait"], stdin=json.dumps({"tasks": [{"task_id": "a", "agent": "echo",
                                                                     "description": "a"}]}), env=env)
    assert submitted.returncode == 0, submitted.stderr
    assert "visibility timeout (60s" in submitted.stderr and "runs twice" in submitted.stderr
    assert json.loads(submitted.stdout)["status"] == "submitted"  # stdout: the run JSON only


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(90)
def test_cancel_reports_the_tasks_it_stopped_as_cancelled_while_running(distributed, tmp_path):
    env = distributed["env"]
    distributed["workers"].start("pf", pool="prefork", concurrency=2)
    config = tmp_path / "slow.json"
    config.write_text(json.dumps({"agents": {"step": {"kind": "shell", "command": ["sleep", "20"]}}}))
    tasks = json.dumps({"tasks": [{"task_id": f"t{i}", "agent": "step", "description": "wait"} for i in range(3)],
                        "config": {"max_workers": 2}})
    follower = start_cli(env, ["--config", str(config)], tasks)
    client = redis.Redis.from_url(distributed["redis"].url)
    prefix = distributed["prefix"]
    wait_for(lambda: len(client.keys(f"{prefix}:dag:*:claims")) == 1
             and client.hlen(client.keys(f"{prefix}:dag:*:claims")[0]) == 2, what="two agent tasks to start")
    run_id = client.keys(f"{prefix}:dag:*:claims")[0].decode().split(":")[-2]
    time.sleep(0.3)
    cancelled = run_cli(["cancel", run_id], env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    followed = finish(follower, timeout=30)
    results = {r["task_id"]: r for r in json.loads(followed.stdout)["results"]}
    running = sorted(t for t, r in results.items() if r["error"] == CANCELLED_RUNNING)
    assert len(running) == 2 and all(results[t]["skipped"] for t in running), results
    (waiting,) = set(results) - set(running)
    assert results[waiting]["error"] == f"skipped: {NOT_RUN}"
    shown = {r["task_id"]: r for r in run_cli(["show", "--json", run_id], env=env).json["task_results"]}
    assert sorted(t for t, r in shown.items() if r["error"] == CANCELLED_RUNNING) == running
