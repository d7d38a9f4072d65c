"""Shared fixtures: the CLI as a subprocess, a private redis-server, real Celery workers.

Servers are started per test session on free ports, so the suite passes on any
machine with the ``redis-server`` binary and never touches a Redis it did not
start.  When the binary is missing, tests that need it are skipped with the
reason printed.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def run_cli(args: list[str], *, stdin: Optional[str] = None, env: dict[str, str], cwd: Path = ROOT,
            timeout: float = 120) -> CliResult:
    proc = subprocess.run([PYTHON, str(ROOT / "cli.py"), *args], input=stdin if stdin is not None else "",
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(tmp_path: Path):
    """Run ``python cli.py`` in embedded mode with a private state directory."""
    env = base_env(tmp_path)

    def call(*args: str, stdin: Optional[str] = None, extra_env: Optional[dict] = None,
             cwd: Path = ROOT) -> CliResult:
        return run_cli(list(args), stdin=stdin, env={**env, **(extra_env or {})}, cwd=cwd)

    call.env = env  # type: ignore[attr-defined]
    return call


# ----------------------------------------------------------------- redis + workers
class RedisServer:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


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


class WorkerPool:
    """Real ``celery -A worker worker`` processes, each its own node."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *extra: str, queues: str = "dispatch.phases,dispatch.agents",
              pool: str = "threads", concurrency: int = 4) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "w")
        proc = subprocess.Popen(
            [PYTHON, "-m", "celery", "-A", "worker", "worker", "-n", f"{name}@%h", "-Q", queues, "-P", pool,
             "-c", str(concurrency), "--loglevel", "INFO", "--without-mingle", "--without-gossip", *extra],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        self.wait_ready(name)
        return proc

    def wait_ready(self, name: str, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        path = self.logdir / f"{name}.log"
        while time.time() < deadline:
            if "ready." in path.read_text(errors="replace"):
                return
            if self.procs[name].poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"worker {name} did not become ready:\n{path.read_text(errors='replace')[-3000:]}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        os.killpg(proc.pid, sig)
        proc.wait(15)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def distributed(redis_server: RedisServer, tmp_path: Path) -> Iterator[dict]:
    """Redis broker/backend/state with a per-test key prefix; workers started by the test."""
    prefix = f"dispatch-test-{tmp_path.name}"
    env = base_env(tmp_path, DISPATCH_BROKER_URL=redis_server.url, DISPATCH_KEY_PREFIX=prefix)
    pool = WorkerPool(env, tmp_path)
    yield {"env": env, "workers": pool, "redis": redis_server, "prefix": prefix}
    pool.stop_all()
