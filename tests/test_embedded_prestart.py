"""An embedded run starts its private redis-server while it imports: only for the commands that run phases
here, once however many threads ask, and the run finds it up."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from dispatch.cli.main import prestart_embedded_redis


@pytest.fixture
def started(monkeypatch):
    calls: list[bool] = []
    monkeypatch.setattr("dispatch.runtime.embedded_server.prestart", lambda: calls.append(True))
    monkeypatch.delenv("DISPATCH_BROKER_URL", raising=False)
    return calls


@pytest.mark.parametrize("args", [[], ["-q"], ["--skip-phases", "0,1"], ["run", "-f", "x.json"],
                                  ["resume", "RUN"]])
def test_the_commands_that_run_phases_here_start_it(started, args):
    prestart_embedded_redis(args)
    assert started == [True]


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--version"], ["run", "--help"], ["schema"], ["runs"],
                                  ["wait", "RUN"], ["cancel", "RUN"], ["mcp"], ["report", "RUN"]])
def test_the_others_do_not(started, args):
    prestart_embedded_redis(args)
    assert started == []


def test_not_with_a_broker(started, monkeypatch):
    monkeypatch.setenv("DISPATCH_BROKER_URL", "redis://localhost:1/0")
    prestart_embedded_redis([])
    assert started == []


PROBE = r"""
import os, threading
from dispatch.runtime import embedded_server
embedded_server.prestart()
seen = []
threads = [threading.Thread(target=lambda: seen.append(embedded_server.embedded_server())) for _ in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
server = embedded_server.embedded_server()
assert isinstance(server, embedded_server.PrivateRedis), type(server)
assert all(s is server for s in seen), "more than one server"
# one redis-server child (spawned from the keeper thread: listed under that thread, not the main one)
tasks = os.listdir(f"/proc/{os.getpid()}/task")
kids = [c for t in tasks for c in open(f"/proc/{os.getpid()}/task/{t}/children").read().split()]
assert len(kids) == 1, kids
assert embedded_server.embedded_client().ping()
print("one")
"""


@pytest.mark.skipif(not shutil.which("redis-server") or not sys.platform.startswith("linux"),
                    reason="needs the redis-server binary (and Linux's /proc)")
def test_one_server_however_many_threads_ask():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "one" in proc.stdout, proc.stderr[-2000:]
