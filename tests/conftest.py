"""Shared fixtures: the CLI as a subprocess, a private redis-server, real Celery workers.

Servers are started per test on free ports, so the suite passes on any
machine with the ``redis-server`` binary and never touches a Redis it did not
start.  When the binary is missing, tests that need it are skipped with the
reason printed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from dispatch.testing import PYTHON, RedisServer, WorkerPool, free_port  # noqa: F401 - re-exported to tests

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env["DISPATCH_STATE_DIR"] = str(tmp_path / "state")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(args: list[str], *, stdin: Optional[str] = None, env: dict[str, str], cwd: Optional[Path] = None,
            timeout: float = 120) -> CliResult:
    """``python cli.py`` in ``cwd`` (default: the test's own folder, not the checkout: a workspace "."
    there is no git work tree, so tasks share it unless a test makes a repository on purpose)."""
    cwd = cwd or Path(env["DISPATCH_STATE_DIR"]).parent
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([PYTHON, str(ROOT / "cli.py"), *args], input=stdin if stdin is not None else "",
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(tmp_path: Path):
    """Run ``python cli.py`` in embedded mode with a private state directory."""
    env = base_env(tmp_path)

    def call(*args: str, stdin: Optional[str] = None, extra_env: Optional[dict] = None,
             cwd: Optional[Path] = None) -> CliResult:
        return run_cli(list(args), stdin=stdin, env={**env, **(extra_env or {})}, cwd=cwd)

    call.env = env  # type: ignore[attr-defined]
    return call


# ----------------------------------------------------------------- redis + workers
@pytest.fixture
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    """A private redis-server per test: queues and keys never leak between tests."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server binary not found: install Redis (Debian: apt-get install redis-server) "
                    "to run the distributed tests")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def distributed(redis_server: RedisServer, tmp_path: Path) -> Iterator[dict]:
    """Redis broker/backend/state with a per-test key prefix; workers started by the test."""
    prefix = f"dispatch-test-{tmp_path.name}"
    env = base_env(tmp_path, DISPATCH_BROKER_URL=redis_server.url, DISPATCH_KEY_PREFIX=prefix)
    pool = WorkerPool(env, tmp_path, cwd=TESTS)  # tests/ on the path: crash_worker
    yield {"env": env, "workers": pool, "redis": redis_server, "prefix": prefix}
    pool.stop_all()


# ----------------------------------------------------------------- rabbitmq
@pytest.fixture
def rabbitmq_url() -> Iterator[str]:
    """An amqp:// URL on a private vhost of the local RabbitMQ, deleted afterwards.

    The queue names are fixed by the code (dispatch.phases, dispatch.agents), so
    without a vhost of its own a test could purge someone else's queues: when
    ``rabbitmqctl`` cannot create one the test is skipped, never run on ``/``.
    """
    import socket
    import uuid

    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        pytest.skip("no RabbitMQ on 127.0.0.1:5672 (start rabbitmq-server to run the amqp tests)")
    ctl = shutil.which("rabbitmqctl")
    if not ctl:
        pytest.skip("rabbitmqctl not found: a private vhost is needed to run the amqp tests safely")
    vhost = f"dispatch-test-{uuid.uuid4().hex[:8]}"
    made = subprocess.run([ctl, "add_vhost", vhost], capture_output=True, text=True, timeout=60)
    if made.returncode != 0:
        pytest.skip(f"cannot create a RabbitMQ vhost (rabbitmqctl needs root or the Erlang cookie): "
                    f"{made.stderr.strip()[:200]}")
    try:
        subprocess.run([ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                       capture_output=True, timeout=60)
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run([ctl, "delete_vhost", vhost], capture_output=True, timeout=60)
