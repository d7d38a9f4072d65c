"""The embedded private redis-server outlives the thread that started it (an MCP server's background run)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

PROBE = r"""
import threading, time
from dispatch.runtime import embedded
started = threading.Thread(target=embedded.embedded_server)
started.start(); started.join()  # the thread that forked the server has ended
server = embedded.embedded_server()
assert isinstance(server, embedded.PrivateRedis), type(server)
time.sleep(0.5)  # a parent-death signal tied to that thread would have stopped it by now
assert server.proc.poll() is None, "the private redis-server died with the thread that started it"
assert embedded.embedded_client().ping()
print("alive")
"""


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs the redis-server binary")
def test_the_private_redis_outlives_the_thread_that_started_it():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "alive" in proc.stdout, proc.stderr[-2000:]
