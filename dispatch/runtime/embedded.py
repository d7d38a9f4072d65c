"""The embedded default: a private Redis for results and coordination, and an in-process threads
worker, so a first run needs no server and runs the same canvas.

The Redis is a private ``redis-server`` on a unix socket, else an in-process
fakeredis (``runtime/embedded_server.py``); Celery's result backend and the
scheduler talk to it through one client (``runtime/embedded_client.py``).

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

from dispatch.runtime.backend import PhaseFourChordParts
from dispatch.runtime.embedded_server import PrivateRedis, embedded_client, embedded_server

__all__ = ["EmbeddedRedisBackend", "PrivateRedis", "embedded_client", "embedded_server", "embedded_worker",
           "silence_worker_logs"]

_SILENT = False  # set by the CLI's -q: the worker logs nothing at all


def silence_worker_logs() -> None:
    """No worker log on stderr, not even error tracebacks (``-q``); the run's outcome still reports them."""
    global _SILENT
    _SILENT = True


class EmbeddedRedisBackend(PhaseFourChordParts):
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
    embedded_server()  # up before the worker (already, when the CLI started it while importing: prestart)

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
