"""The embedded run's Redis: a private ``redis-server`` on a unix socket, else an in-process fakeredis.

Why a module of its own: it imports neither Celery nor redis-py, so the CLI can
start the server the moment it knows a run is embedded (``prestart``), while it
is still importing everything else; the server is then up when the worker asks
for it, instead of the run waiting for its start (about 30 ms).

The server is a ``redis-server`` child on a unix socket in a private temporary
directory (no TCP port, no persistence, stopped with the process, and by the
kernel should the process die) when the binary is on ``PATH``: the scheduler's
Lua scripts cost about 0.05 ms there against 1-3 ms in fakeredis.  Without the
binary, or should it fail to start, an in-process fakeredis serves instead
(``DISPATCH_EMBEDDED_REDIS=fakeredis`` chooses it).  One server per process,
started once whichever threads ask at the same time.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

_SERVER: Any = None
_STARTING = threading.Lock()  # held by the thread that starts the server; the others wait for it
DIR_PREFIX = "dispatch-embedded-"


def wants_private_server() -> bool:
    return os.environ.get("DISPATCH_EMBEDDED_REDIS") != "fakeredis"


def embedded_server() -> Any:
    """The one Redis every embedded client in this process shares: a ``PrivateRedis`` or a fakeredis server."""
    global _SERVER
    if _SERVER is None:
        with _STARTING:
            if _SERVER is None:
                private = PrivateRedis.start() if wants_private_server() else None
                if private is None:
                    import fakeredis

                    _SERVER = fakeredis.FakeServer()
                else:
                    _SERVER = private
    return _SERVER


def embedded_client() -> Any:
    server = embedded_server()
    if isinstance(server, PrivateRedis):
        return server.client()
    import fakeredis

    return fakeredis.FakeRedis(server=server)


def prestart() -> None:
    """Start the server in the background now; ``embedded_server`` then returns it (waiting if need be)."""
    if _SERVER is None and wants_private_server():
        threading.Thread(target=embedded_server, name="dispatch-embedded-redis-start", daemon=True).start()


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
        import tempfile

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
            if os.path.exists(sock) and pong(sock):
                # not stopped at exit: results finalized after atexit still talk to it; it ends
                # with this process (PDEATHSIG), and the next embedded run removes its folder
                return server
            time.sleep(0.005)  # rarely: each wake-up takes the GIL from the imports this start overlaps
        server.stop()
        return None  # it did not come up: fakeredis serves instead

    def client(self) -> Any:
        from dispatch.runtime.embedded_client import unix_socket_client

        return unix_socket_client(self.socket)  # redis-py, with a leaner command packer

    def stop(self) -> None:
        import shutil

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2)
            except Exception:  # noqa: BLE001 - it is going either way
                self.proc.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def pong(path: str, timeout_s: float = 0.5) -> bool:
    """The server on ``path`` answers ``PING`` (a raw RESP exchange: no client library to import)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(path)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:  # not listening yet
        return False


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
    the first embedded run of any worker thread, ``prestart``), the server would be
    stopped under the process's later runs.  The keeper thread never returns, so the
    signal comes only when the process itself dies.
    """
    import subprocess

    die_with_parent = parent_death_signal()  # resolved here: the forked child imports nothing
    spawned: dict[str, Any] = {}
    ready = threading.Event()

    def keeper() -> None:
        try:
            spawned["proc"] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
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


def parent_death_signal() -> Any:
    """What the child runs before exec (Linux): SIGTERM when the CLI's process dies, however it dies.

    Everything is looked up in the parent: a child forked while another thread of the
    CLI holds an import lock would deadlock on an import of its own.
    """
    import signal

    try:
        import ctypes

        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError, ImportError):
        return None
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the CLI ended between the fork and the line above: no signal will come
            os._exit(1)

    return die_with_parent
