"""Real servers and workers for tests and benchmarks (cf. ``celery.contrib.testing``).

A private ``redis-server`` on a free port and real ``celery -A worker worker``
processes, so the suite and the benchmarks measure what users run.  A worker may
run as another user (``OtherUser``): a worker on another machine, which cannot
read the submitting user's files.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, tmp: Path, appendonly: bool = False) -> None:
        self.port = free_port()
        self.dir = tmp
        self.appendonly = appendonly  # AOF, fsync every second: a restart keeps the queues and the runs
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes" if self.appendonly else "no",
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


class OtherUser:
    """Running a process as another user (default ``nobody``) through ``setpriv``, when we are root.

    This interpreter may live where that user cannot go (a venv under a 0700 ``/root``), so the
    process runs the system ``python3`` (same minor version) with this checkout and its
    site-packages on ``PYTHONPATH``.  ``available`` says whether that works here.
    """

    def __init__(self, uid: int = NOBODY, gid: Optional[int] = None) -> None:
        self.uid = uid
        self.gid = uid if gid is None else gid

    @staticmethod
    def pythonpath() -> str:
        site = [p for p in sys.path if p.endswith("site-packages") and p.startswith(str(ROOT))]
        return os.pathsep.join([str(ROOT), *site])

    def argv(self, *command: str) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", *command]

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """A minimal environment of that user's own: HOME, the system PATH, the code on PYTHONPATH."""
        return {"PATH": SYSTEM_PATH, "HOME": str(home), "PYTHONPATH": self.pythonpath(), "LANG": "C.UTF-8", **extra}

    def home(self, prefix: str) -> Path:
        """A fresh directory owned by that user (its cwd and HOME)."""
        path = Path(tempfile.mkdtemp(prefix=prefix))
        os.chown(path, self.uid, self.gid)
        return path

    def available(self, *modules: str) -> bool:
        if os.geteuid() != 0 or not shutil.which("setpriv") or not Path(SYSTEM_PYTHON).exists():
            return False
        probe = subprocess.run(self.argv(SYSTEM_PYTHON, "-c", f"import {', '.join(modules or ('dispatch',))}"),
                               env=self.env(Path("/tmp")), cwd="/tmp", capture_output=True)
        return probe.returncode == 0


class WorkerPool:
    """Real ``celery worker`` processes, each its own node, started in ``cwd`` (default: ``logdir``).

    ``start(..., user=OtherUser(), home=DIR, env={...})`` runs one as another user in its own
    directory (cwd and HOME), with that user's environment plus ``env`` (the pool's environment,
    which may name the user's paths, is not passed on).
    """

    def __init__(self, env: dict[str, str], logdir: Path, cwd: Optional[Path] = None) -> None:
        self.env = env
        self.logdir = logdir
        self.cwd = cwd or logdir
        self.procs: dict[str, subprocess.Popen] = {}

    def queue_names(self, roles: str) -> str:
        """``"phases,agents"`` -> the deployment's queue names (``<DISPATCH_KEY_PREFIX>.phases`` ...)."""
        prefix = self.env.get("DISPATCH_KEY_PREFIX") or "dispatch"
        return ",".join(f"{prefix}.{role.strip()}" for role in roles.split(","))

    def start(self, name: str, *extra: str, queues: str = "phases,agents",
              pool: str = "threads", concurrency: int = 4, app: str = "dispatch.runtime.worker",
              user: Optional[OtherUser] = None, home: Optional[Path] = None,
              env: Optional[dict[str, str]] = None) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "w")
        argv = ["-m", "celery", "-A", app, "worker", "-n", f"{name}@%h", "-Q", self.queue_names(queues), "-P", pool,
                "-c", str(concurrency), "--loglevel", "INFO", "--without-mingle", "--without-gossip", *extra]
        if user is None:
            argv, cwd, environ = [PYTHON, *argv], home or self.cwd, {**self.env, **(env or {})}
        else:
            home = home or user.home(f"dispatch-{name}-")
            argv, cwd, environ = user.argv(SYSTEM_PYTHON, *argv), home, user.env(home, **(env or {}))
        proc = subprocess.Popen(argv, cwd=cwd, env=environ, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
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
