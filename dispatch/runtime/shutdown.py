"""A worker stopping while a phase body it gave up at its timeout is still blocked exits without it.

Why: a phase past ``[phases] timeouts_s`` leaves its body in a thread that may
never return (``dispatch.pipeline.phases.call_with_deadline``); a thread pool
inside that body (the quorum's) is joined by Python at exit, forever, so a
warm shutdown would hang.  Once Celery has finished its own shutdown
(``worker_shutdown``, the last step), such a worker process exits at once.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

from celery import signals

from dispatch.pipeline.phases import abandoned_bodies

logger = logging.getLogger(__name__)


def install_on_workers() -> None:
    """Connect the handlers (``create_app`` calls this for each app it builds; Celery keeps one
    connection per ``dispatch_uid``, so calling it again connects nothing twice)."""
    signals.worker_shutdown.connect(_on_worker_shutdown, weak=False,
                                    dispatch_uid="dispatch.runtime.shutdown._on_worker_shutdown")


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    settings = getattr(getattr(sender, "app", None), "dispatch_settings", None)
    if settings is None or settings.embedded:
        return  # the embedded worker stops inside the CLI, which exits on its own terms
    blocked = abandoned_bodies()
    if blocked:
        logger.warning("%d phase bod%s given up at its timeout still blocked: exiting without waiting",
                       blocked, "y" if blocked == 1 else "ies")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(getattr(sender, "exitcode", 0) or 0)
