"""The in-process worker of the embedded default: no server, same canvas."""
from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def embedded_worker(app: Any, concurrency: int = 8) -> Iterator[Any]:
    """Run a threads-pool worker inside this process for the duration of the block."""
    from celery.contrib.testing.worker import start_worker

    level = os.environ.get("DISPATCH_WORKER_LOG_LEVEL", "ERROR")
    logging.getLogger("celery").setLevel(level)
    with start_worker(app, pool="threads", concurrency=concurrency, perform_ping_check=False,
                      loglevel=level, shutdown_timeout=30,
                      hostname=f"embedded@{socket.gethostname()}") as worker:
        yield worker
