"""Issue 14, item 3: a full Redis (maxmemory under noeviction) mid-run.  Workers used to exit ("Unrecoverable
error: OutOfMemoryError"); now they ride it out and the run completes, each task once, once memory is freed.
A private redis-server per test (never the machine's), real workers, shell agents logging every execution."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import redis

from conftest import PYTHON, ROOT, CliResult, run_cli
from dispatch.runtime.app import create_app
from dispatch.config import Settings

pytestmark = [pytest.mark.redis, pytest.mark.slow]
LIMIT = 64 * 1024 * 1024


class Ballast:
    """Fills the test's Redis until it refuses writes, and keeps it full until ``free``."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.keys: list[str] = []

    def fill(self) -> None:
        chunk = b"x" * (1024 * 1024)
        while True:
            try:
                self.client.set(f"ballast:{len(self.keys)}", chunk)
                self.keys.append(f"ballast:{len(self.keys)}")
            except redis.exceptions.OutOfMemoryError:
                break
        # the refused write's buffer is freed again: pull the limit under what is used, so it stays full
        time.sleep(0.2)
        self.client.config_set("maxmemory", self.client.info("memory")["used_memory"] - 2 * 1024 * 1024)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            self.client.set("probe", "x")

    def free(self) -> None:
        self.client.delete(*self.keys)
        self.client.config_set("maxmemory", LIMIT)


@pytest.fixture
def full_redis(distributed):
    client = redis.Redis.from_url(distributed["redis"].url)
    client.config_set("maxmemory", LIMIT)
    client.config_set("maxmemory-policy", "noeviction")
    return Ballast(client)


def logged_agents(tmp_path: Path, log: Path) -> Path:
    config = tmp_path / "agents.json"
    config.write_text(json.dumps({"agents": {"step": {"kind": "shell", "command": [
        "sh", "-c", f"echo {{task_id}} >> {log}; sleep 0.2"]}}}))
    return config


def test_workers_ride_out_a_full_redis_and_every_task_runs_once(distributed, full_redis, tmp_path):
    env = distributed["env"]
    for name in ("w1", "w2"):
        distributed["workers"].start(name)
    log = tmp_path / "executions.log"
    tasks = [{"task_id": f"t{i}", "agent": "step", "description": "step",
              "dependencies": [f"t{i - 1}"] if i % 4 else []} for i in range(32)]
    source = tmp_path / "tasks.json"
    source.write_text(json.dumps({"tasks": tasks, "config": {"max_workers": 4}}))
    with open(source) as stdin:
        follower = subprocess.Popen([PYTHON, str(ROOT / "cli.py"), "--config", str(logged_agents(tmp_path, log))],
                                    stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                    cwd=tmp_path)
    deadline = time.time() + 60
    while len(log.read_text().split() if log.exists() else []) < 6:
        assert time.time() < deadline and follower.poll() is None, "phase 4 did not start"
        time.sleep(0.05)
    full_redis.fill()
    ran_when_full = len(log.read_text().split())
    time.sleep(5)
    assert len(log.read_text().split()) <= ran_when_full + 8  # at most what was already under way
    assert all(p.poll() is None for p in distributed["workers"].procs.values()), "a worker exited"
    full_redis.free()
    out, err = follower.communicate(timeout=120)
    result = CliResult(follower.returncode, out, err)
    assert result.returncode == 0, err[-3000:]
    assert result.json["status"] == "succeeded" and all(r["success"] for r in result.json["results"])
    ran = log.read_text().split()
    assert sorted(ran) == sorted(t["task_id"] for t in tasks), "a task ran twice or not at all"
    assert all(p.poll() is None for p in distributed["workers"].procs.values())
    logs = "".join((tmp_path / f"{name}.log").read_text() for name in ("w1", "w2"))
    assert "Unrecoverable error" not in logs
    assert "Redis is out of memory" in logs  # the one clear warning


def test_the_cli_says_redis_is_out_of_memory_when_it_cannot_submit(distributed, full_redis):
    full_redis.fill()
    env = {**distributed["env"], "DISPATCH_RECONNECT_TIMEOUT_S": "1"}
    refused = run_cli([], stdin=json.dumps({"tasks": [{"task_id": "a", "agent": "echo", "description": "d"}]}),
                      env=env, timeout=60)
    assert refused.returncode == 1, refused.stderr
    assert "Redis is out of memory (maxmemory " in refused.stderr and "policy noeviction" in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stdout == ""
    full_redis.free()


def test_the_redis_broker_uses_the_transport_that_counts_a_full_redis_as_a_connection_loss():
    from redis.exceptions import OutOfMemoryError

    app = create_app(Settings(broker_url="redis://127.0.0.1:1/0"))
    with app.connection_for_write() as conn:
        assert OutOfMemoryError in conn.connection_errors
        assert conn.transport_options["dispatch_oom_wait_s"] == Settings().reconnect_timeout_s
