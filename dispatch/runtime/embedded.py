"""The embedded default: a private Redis for results and coordination, and an in-process threads
worker, so a first run needs no server and runs the same canvas.

The Redis is a ``redis-server`` this process starts on a unix socket of its own
(no TCP port, no persistence, stopped with the process, and by the kernel
should the process die) when the binary is on ``PATH``: the scheduler's Lua
scripts cost about 0.05 ms there against 1-3 ms in fakeredis, which was most of
an embedded task's cost.  Without the binary, or should it fail to start, an
in-process fakeredis serves instead (``DISPATCH_EMBEDDED_REDIS=fakeredis``
chooses it).

The worker logs to the CLI's stderr at ``DISPATCH_WORKER_LOG_LEVEL`` (ERROR by
default); ``silence_worker_logs`` (the CLI's ``-q``) turns even its error
tracebacks off, since every failure also reaches the user as the run's result.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from celery.backends.redis import RedisBackend

_EMBEDDED_SERVER: Any = None
_SILENT = False  # set by the CLI's -q: the worker logs nothing at all


def silence_worker_logs() -> None:
    """No worker log on stderr, not even error tracebacks (``-q``); the run's outcome still reports them."""
    global _SILENT
    _SILENT = True


def embedded_server() -> Any:
    """The one Redis every embedded client in this process shares: a ``PrivateRedis`` or a fakeredis server."""
    global _EMBEDDED_SERVER
    if _EMBEDDED_SERVER is None:
        private = PrivateRedis.start() if os.environ.get("DISPATCH_EMBEDDED_REDIS") != "fakeredis" else None
        if private is None:
            import fakeredis

            _EMBEDDED_SERVER = fakeredis.FakeServer()
        else:
            _EMBEDDED_SERVER = private
    return _EMBEDDED_SERVER


def embedded_client() -> Any:
    server = embedded_server()
    if isinstance(server, PrivateRedis):
        return server.client()
    import fakeredis

    return fakeredis.FakeRedis(server=server)


class PrivateRedis:
    """A ``redis-server`` child on a unix socket in a private temporary directory (mode 0700)."""

    START_TIMEOUT_S = 3.0

    def __init__(self, proc: Any, directory: str) -> None:
        self.proc = proc
        self.directory = directory
        self.socket = os.path.join(directory, "redis.sock")

    @classmethod
    def start(cls) -> "PrivateRedis | None":
        import shutil
        import subprocess
        import tempfile
        import time

        binary = shutil.which("redis-server")
        if binary is None:
            return None
        sweep_stale_directories()
        # 0700: only this user reaches the socket; the pid in the name lets a later run remove it
        directory = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-")
        sock = os.path.join(directory, "redis.sock")
        if len(sock) > 100:  # past a unix socket path's limit (108 bytes): a short folder instead
            os.rmdir(directory)
            directory = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir="/tmp")
            sock = os.path.join(directory, "redis.sock")
        try:
            proc = spawn_from_keeper_thread(
                [binary, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700", "--save", "",
                 "--appendonly", "no", "--dir", directory, "--loglevel", "warning"])
        except OSError:
            return None
        server = cls(proc, directory)
        deadline = time.monotonic() + cls.START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(sock):
                try:
                    if server.client().ping():
                        # not stopped at exit: results finalized after atexit still talk to it; it ends
                        # with this process (PDEATHSIG), and the next embedded run removes its folder
                        return server
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
            time.sleep(0.002)
        server.stop()
        return None  # it did not come up: fakeredis serves instead

    def client(self) -> Any:
        import redis

        return redis.Redis(unix_socket_path=self.socket)

    def stop(self) -> None:
        import shutil

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2)
            except Exception:  # noqa: BLE001 - it is going either way
                self.proc.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


DIR_PREFIX = "dispatch-embedded-"


def sweep_stale_directories() -> None:
    """The socket folders of embedded runs whose process is gone (each names its pid)."""
    import glob
    import shutil
    import tempfile

    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{DIR_PREFIX}*-*")):
        try:
            pid = int(os.path.basename(path)[len(DIR_PREFIX):].split("-")[0])
            if os.stat(path).st_uid != os.getuid():
                continue
            os.kill(pid, 0)  # still running: leave it
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, OSError):
            continue


def spawn_from_keeper_thread(argv: list[str]) -> Any:
    """``Popen(argv)`` from a daemon thread that lives as long as this process.

    The child's parent-death signal follows the *thread* that forked it, not the
    process: started from a thread that then ends (an MCP server's background run,
    the first embedded run of any worker thread), the server would be stopped under
    the process's later runs.  The keeper thread never returns, so the signal comes
    only when the process itself dies.
    """
    import subprocess

    spawned: dict[str, Any] = {}
    ready = threading.Event()

    def keeper() -> None:
        try:
            spawned["proc"] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                                               close_fds=True)
        except OSError as exc:
            spawned["error"] = exc
        ready.set()
        threading.Event().wait()  # until the process ends

    threading.Thread(target=keeper, name="dispatch-embedded-redis", daemon=True).start()
    ready.wait()
    if "error" in spawned:
        raise spawned["error"]
    return spawned["proc"]


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the CLI's process dies, however it dies."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class EmbeddedRedisBackend(RedisBackend):
    """Celery's Redis result backend talking to the in-process server."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("url", "redis://embedded/0")
        super().__init__(*args, **kwargs)

    def _create_client(self, **params: Any) -> Any:
        return embedded_client()


@contextmanager
def embedded_worker(app: Any, concurrency: int = 8) -> Iterator[Any]:
    """Run a threads-pool worker inside this process for the duration of the block."""
    from celery.app.trace import setup_worker_optimizations
    from celery.contrib.testing.worker import TestWorkController

    from dispatch.runtime.memory import install

    install()  # the whole-run tasks give their memory back, here as on a worker
    from dispatch.runtime import embedded_executor

    # phase 4's agent tasks on threads of this process, without a message each (runtime/embedded_executor.py)
    app.dispatch_phase_4_inline = embedded_executor.run_phase_4 if embedded_executor.enabled() else None
    embedded_server()  # started from this thread, which lives as long as the run (PDEATHSIG is per thread)

    level = "CRITICAL" if _SILENT else os.environ.get("DISPATCH_WORKER_LOG_LEVEL", "ERROR")
    # what Celery's test harness does to ready an app for an in-process worker, less making it the
    # process's current and default app: the client's app stays its own (set_as_current=False)
    app.finalize()
    type(app.log)._setup = False
    app.log.setup(loglevel=level, logfile=None)
    logging.getLogger("celery").setLevel(level)
    if _SILENT:  # what Celery's setup does not reach: the library loggers a task's code may use
        logging.getLogger().setLevel(logging.CRITICAL)
    worker = TestWorkController(
        app=app, concurrency=concurrency, pool="threads", loglevel=level, logfile=None,
        hostname=f"embedded@{socket.gethostname()}", ready_callback=None,
        without_heartbeat=True, without_mingle=True, without_gossip=True)
    # the tracer's fast path carries the node name into each task's request (TaskResult.worker)
    setup_worker_optimizations(app, worker.hostname)
    thread = threading.Thread(target=worker.start, name="dispatch-embedded-worker", daemon=True)
    thread.start()
    worker.ensure_started()
    try:
        yield worker
    finally:
        # Every task of the run has finished (and saved its state) when the block
        # exits.  The consumer notices the stop only at its next 2 s drain timeout,
        # so do not wait for that: the thread is a daemon and ends on its own.
        worker.stop(in_sighandler=False, exitcode=0)
        thread.join(0.005)
