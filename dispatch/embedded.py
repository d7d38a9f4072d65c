"""The in-process worker of the embedded default: no server, same canvas."""
from __future__ import annotations

import logging
import os
import socket
import threading
from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def embedded_worker(app: Any, concurrency: int = 8) -> Iterator[Any]:
    """Run a threads-pool worker inside this process for the duration of the block."""
    from celery.app.trace import setup_worker_optimizations
    from celery.contrib.testing.worker import TestWorkController, setup_app_for_worker

    level = os.environ.get("DISPATCH_WORKER_LOG_LEVEL", "ERROR")
    setup_app_for_worker(app, level, None)
    logging.getLogger("celery").setLevel(level)
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
        thread.join(0.05)
