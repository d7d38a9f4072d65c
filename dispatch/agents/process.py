"""Running one child process for the ``shell`` kind: its own process group,
size-capped output read concurrently, and a soft-then-hard kill of the group.

Why each piece:
- ``start_new_session=True`` puts the command and everything it spawns in one
  process group, so a timeout (or a leader that exits leaving helpers behind)
  can be cleaned up with one ``killpg``: nothing outlives its task on a worker.
- stdout and stderr are drained by threads from the start, so a child writing
  megabytes never blocks on a full pipe; only the first and last halves of the
  cap are kept (results and tracebacks tend to sit at the end).
- stdin is fed by a thread too, so a long prompt on stdin and a chatty child
  cannot deadlock each other.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
import sys
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterator, Optional

from dispatch.common.text import as_text

_CHUNK = 64 * 1024
_POLL_S = 0.02

# Every agent process group this process started and that still runs, with its kill grace: an embedded run
# stopped by SIGINT/SIGTERM stops them all (``stop_all``), so no agent outlives the CLI.
_LIVE: dict[int, float] = {}
_LIVE_LOCK = threading.Lock()


def stop_all(hurry: Callable[[], bool] = lambda: False) -> int:
    """SIGTERM every live agent process group, SIGKILL what is left after its grace (at once when
    ``hurry()`` turns true, e.g. a second Ctrl-C).  Returns how many groups were signalled."""
    with _LIVE_LOCK:
        groups = dict(_LIVE)
    for pgid in groups:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + max(groups.values(), default=0.0)
    while any(_group_alive(g) for g in groups) and time.monotonic() < deadline and not hurry():
        time.sleep(_POLL_S)
    for pgid in groups:
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
    return len(groups)


@dataclass
class Captured:
    text: str
    total_bytes: int
    truncated: bool


@dataclass
class ProcessResult:
    returncode: Optional[int]
    stdout: Captured
    stderr: Captured
    timed_out: bool
    duration_ms: float


class _CappedReader(threading.Thread):
    """Reads a pipe to EOF keeping the first ``cap // 2`` and last ``cap - cap // 2`` bytes."""

    def __init__(self, stream: IO[bytes], cap: int) -> None:
        super().__init__(daemon=True)  # daemon: a pipe held open by an escaped process must not block exit
        self.stream = stream
        self.head_cap = cap // 2
        self.tail_cap = cap - self.head_cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.lock = threading.Lock()

    def run(self) -> None:
        fd = self.stream.fileno()
        try:
            while chunk := os.read(fd, _CHUNK):
                with self.lock:
                    self.total += len(chunk)
                    room = self.head_cap - len(self.head)
                    if room > 0:
                        self.head += chunk[:room]
                        chunk = chunk[room:]
                    if chunk:
                        self.tail += chunk
                        if len(self.tail) > 2 * self.tail_cap + _CHUNK:
                            del self.tail[:len(self.tail) - self.tail_cap]
        except OSError:
            pass
        finally:
            self.stream.close()

    def captured(self) -> Captured:
        with self.lock:
            tail = bytes(self.tail[-self.tail_cap:]) if self.tail_cap else b""
            dropped = self.total - len(self.head) - len(tail)
            head = as_text(self.head)
        if dropped <= 0:
            return Captured(head + as_text(tail), self.total, False)
        marker = f"\n... [{dropped} bytes truncated] ...\n"
        return Captured(head + marker + as_text(tail), self.total, True)


def _feed(stream: IO[bytes], data: bytes) -> None:
    try:
        stream.write(data)
    except (BrokenPipeError, OSError):
        pass  # the child does not read its stdin: that is its business
    finally:
        try:
            stream.close()
        except OSError:
            pass


def run_process(argv: list[str], *, cwd: str, env: dict[str, str], stdin: Optional[bytes],
                timeout_s: float, kill_grace_s: float, max_output_bytes: int) -> ProcessResult:
    """Run ``argv`` (no shell) to completion or timeout.  Raises ``OSError`` when
    it cannot be started (missing program, permissions, arguments too long)."""
    with process_span(argv) as span:
        result = _run(argv, cwd=cwd, env=env, stdin=stdin, timeout_s=timeout_s, kill_grace_s=kill_grace_s,
                      max_output_bytes=max_output_bytes)
        if span is not None:
            span.set_attribute("process.exit.code", -1 if result.returncode is None else result.returncode)
            span.set_attribute("dispatch.timed_out", result.timed_out)
        return result


@contextmanager
def process_span(argv: list[str]) -> Iterator[Any]:
    """A span around the agent's process when OpenTelemetry is already loaded in this process (the
    ``[otel]`` extra, switched on by ``dispatch.runtime.telemetry``); nothing is imported otherwise."""
    if "opentelemetry.trace" not in sys.modules:
        yield None
        return
    from opentelemetry import trace

    with trace.get_tracer("dispatch.agents").start_as_current_span(
            "dispatch.agent.process", attributes={"process.executable.name": os.path.basename(argv[0]),
                                                  "process.command_args.count": len(argv)}) as span:
        yield span


def _run(argv: list[str], *, cwd: str, env: dict[str, str], stdin: Optional[bytes],
         timeout_s: float, kill_grace_s: float, max_output_bytes: int) -> ProcessResult:
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, start_new_session=True, close_fds=True,
                            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pgid = proc.pid  # a new session's leader is its process group's leader
    with _LIVE_LOCK:
        _LIVE[pgid] = kill_grace_s
    try:
        return _supervise(proc, pgid, started, stdin, timeout_s, kill_grace_s, max_output_bytes)
    finally:
        with _LIVE_LOCK:
            _LIVE.pop(pgid, None)


def _supervise(proc: subprocess.Popen, pgid: int, started: float, stdin: Optional[bytes], timeout_s: float,
               kill_grace_s: float, max_output_bytes: int) -> ProcessResult:
    readers = [_CappedReader(proc.stdout, max_output_bytes), _CappedReader(proc.stderr, max_output_bytes)]
    for reader in readers:
        reader.start()
    if stdin is not None:
        threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True).start()
    try:
        timed_out = not _wait_exit(proc, max(timeout_s, 0.0))
    except BaseException:  # interrupted (worker shutdown): leave nothing running behind us
        terminate_group(proc, pgid, 0.0)
        raise
    duration_ms = (time.monotonic() - started) * 1000.0
    # After a timeout this stops the command; after a normal exit it clears helpers it left behind.
    terminate_group(proc, pgid, kill_grace_s)
    for reader in readers:
        reader.join(timeout=kill_grace_s + 1.0)  # only a process that escaped the group can hold a pipe longer
    return ProcessResult(proc.returncode, readers[0].captured(), readers[1].captured(), timed_out, duration_ms)


def _wait_exit(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for the leader to exit, without reaping it where Linux allows (pidfd).

    An unreaped leader keeps its pid, which is the group's id, reserved: the
    group can then be signalled with no risk of hitting an unrelated process
    that was given the recycled number.  The pidfd also wakes us the moment the
    process exits, where ``Popen.wait(timeout)`` polls with growing sleeps.
    """
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        return bool(ready)
    finally:
        os.close(fd)


def terminate_group(proc: subprocess.Popen, pgid: int, grace_s: float) -> None:
    """SIGTERM whatever still runs in the group, wait up to ``grace_s`` for it to
    stop, SIGKILL the rest; reap the leader last (see ``_wait_exit``)."""
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
    proc.wait()


def _group_alive(pgid: int) -> bool:
    """Whether any member of the group still runs.  Zombies answer ``kill(0)``
    too, and where PID 1 does not reap orphans they linger, so on Linux /proc
    is asked for a member that is not a zombie."""
    if not _signal_group(pgid, 0):
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the group; False when no member is left."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
