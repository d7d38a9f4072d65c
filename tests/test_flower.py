"""Real Flower against the test Redis and real workers: a run is visible, by run id, as it goes."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import redis

from conftest import PYTHON, ROOT, free_port, run_cli

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(120)]

AUTH = ("ops", "flower-pw")
SECRET = "sk-flower-test-secret-value"


@pytest.fixture
def flower(distributed, tmp_path: Path) -> Iterator[httpx.Client]:
    port = free_port()
    log = open(tmp_path / "flower.log", "w")
    proc = subprocess.Popen(
        [PYTHON, "-m", "celery", "-A", "worker", "flower", f"--port={port}", "--address=127.0.0.1",
         f"--basic-auth={AUTH[0]}:{AUTH[1]}", "--persistent=False"],
        cwd=ROOT, env=distributed["env"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=AUTH, timeout=5)
    try:
        deadline = time.time() + 30
        while True:
            try:
                if client.get("/healthcheck").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"flower did not start:\n{(tmp_path / 'flower.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def tasks_json(n: int = 6) -> str:
    return json.dumps({"tasks": [{"task_id": f"job-{i}", "agent": "sleep", "description": "wait a little",
                                  "input_data": {"duration_ms": 500}} for i in range(n)],
                       "config": {"max_workers": 2}})


def test_flower_shows_phase_and_agent_tasks_with_their_run_id(distributed, flower):
    distributed["env"]["OPENAI_API_KEY"] = SECRET  # a worker secret: must never reach Flower
    distributed["workers"].start("fl", concurrency=4)
    assert flower.get("/api/tasks", auth=None).status_code == 401  # the API is not open without auth
    submitted = run_cli(["--no-wait"], stdin=tasks_json(), env=distributed["env"])
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.json["run_id"]
    backend = redis.Redis.from_url(distributed["redis"].url)
    progress_key = f"{distributed['prefix']}:progress:{run_id}"

    seen_states, metas = set(), []
    deadline = time.time() + 60
    while time.time() < deadline:
        target = backend.get(progress_key)
        if target:
            phase_4 = json.loads(target)["task_id"]
            answer = flower.get(f"/api/task/result/{phase_4}")
            assert answer.status_code == 200, (answer.status_code, answer.text)
            seen_states.add(answer.json()["state"])
            meta = json.loads(backend.get(f"{distributed['prefix']}:celery-task-meta-{phase_4}") or "{}")
            if meta.get("status") == "PROGRESS":
                metas.append(meta["result"])
        shown = run_cli(["show", "--json", run_id], env=distributed["env"])
        if shown.returncode == 0 and shown.json["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.2)
    assert shown.json["status"] == "succeeded"
    assert "PROGRESS" in seen_states  # Flower reads phase 4's custom state while it runs
    assert metas and all(set(m) == {"run_id", "phase", "done", "total"} and m["run_id"] == run_id for m in metas)
    assert {m["total"] for m in metas} == {6} and max(m["done"] for m in metas) >= 1

    # agent tasks in the run's ledger (kept minutes after phase 4 closes), phase tasks in their own hash
    ledger = {k.decode(): v.decode() for name in ("tasks", "phases")
              for k, v in backend.hgetall(f"{distributed['prefix']}:{name}:{run_id}").items()}
    assert sorted(ledger.values()) == sorted([f"agent:job-{i}" for i in range(6)] + ["phase_2", "phase_3", "phase_4"])
    tasks: dict = {}
    deadline = time.time() + 15
    while time.time() < deadline:  # events reach Flower asynchronously
        tasks = flower.get("/api/tasks").json()
        if set(ledger) <= set(tasks) and all(tasks[i]["state"] == "SUCCESS" for i in ledger):
            break
        time.sleep(0.3)
    for celery_id, label in ledger.items():
        info = tasks[celery_id]
        assert run_id in info["args"] and info["state"] == "SUCCESS" and info["worker"].startswith("fl@"), info
        if label.startswith("agent:"):
            assert info["name"] == f"dispatch.agent:{label[6:]}" and info["args"] == repr((run_id, label[6:])), info
            assert celery_id.startswith(run_id), celery_id
        elif label == "phase_4":  # replaced by its chord: the same id goes on as the collect step
            assert info["name"] in ("dispatch.phase_4_parallel_execution", "dispatch.collect"), info
        else:
            assert info["name"] == {"phase_2": "dispatch.phase_2_task_planning",
                                    "phase_3": "dispatch.phase_3_context_filtering"}[label]
            # the phase tasks carry a reference to the state (run id and version), never the state
            assert info["args"].startswith(f"({{'run_id': '{run_id}', 'version': "), info
    workers = flower.get("/api/workers", params={"refresh": "1"}, timeout=15)
    assert workers.status_code == 200 and "fl@" in workers.text
    everything = json.dumps(tasks) + workers.text
    assert SECRET not in everything


def test_flower_turns_task_events_on_for_workers_started_with_them_off(distributed, flower, tmp_path):
    """DISPATCH_TASK_EVENTS=0 saves the publishes when nobody watches; Flower asks for them when it does."""
    env = distributed["env"]
    env["DISPATCH_TASK_EVENTS"] = "0"
    distributed["workers"].start("quiet", concurrency=4)
    log = tmp_path / "quiet.log"
    deadline = time.time() + 20
    while "enabled by remote" not in log.read_text():
        assert time.time() < deadline, f"Flower did not enable events:\n{log.read_text()[-2000:]}"
        time.sleep(0.2)
    run = run_cli([], stdin=tasks_json(3), env=env)
    assert run.returncode == 0, run.stderr
    run_id = run.json["run_id"]
    backend = redis.Redis.from_url(distributed["redis"].url)
    agents = {k.decode() for k, v in backend.hgetall(f"{distributed['prefix']}:tasks:{run_id}").items()
              if v.startswith(b"agent:")}
    assert len(agents) == 3
    tasks: dict = {}
    deadline = time.time() + 15
    while time.time() < deadline:
        tasks = flower.get("/api/tasks").json()
        if agents <= set(tasks) and all(tasks[i]["state"] == "SUCCESS" for i in agents):
            break
        time.sleep(0.3)
    assert agents <= set(tasks), sorted(tasks)
    assert all(tasks[i]["name"].startswith("dispatch.agent:") and tasks[i]["worker"].startswith("quiet@")
               for i in agents)
