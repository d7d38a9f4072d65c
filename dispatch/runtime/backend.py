"""Celery's Redis result backend whose every client, on a worker, rides out a lost or full Redis.

Why: Celery builds one backend (and so one Redis client and pool) per thread,
so retrying only the client a task body first reached (``deployment_of``) left
the others bare: a threads-pool worker storing phase 4's progress from another
thread failed its task on the first ``OutOfMemoryError`` of a full Redis.  The
client is made here, so each one gets the retry (``ride_out_outages``) in a worker
process (``worker_init``), never in the CLI, which rides out outages in its own loop.
"""
from __future__ import annotations

from typing import Any

from celery import signals
from celery.backends.redis import RedisBackend

from dispatch.store import ride_out_outages


class WorkerRedisBackend(RedisBackend):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = getattr(kwargs.get("app"), "dispatch_settings", None)
        if not kwargs.get("url") and settings is not None:
            kwargs["url"] = settings.result_backend
        super().__init__(*args, **kwargs)

    def _create_client(self, **params: Any) -> Any:
        client = super()._create_client(**params)
        settings = getattr(self.app, "dispatch_settings", None)
        if settings is not None and getattr(self.app, "_dispatch_on_worker", False):
            ride_out_outages(client, settings.reconnect_timeout_s)
        return client


def install_on_workers() -> None:
    """Connect the handlers (``create_app`` calls this for each app it builds; Celery keeps one
    connection per ``dispatch_uid``, so calling it again connects nothing twice)."""
    signals.worker_init.connect(_on_worker_init, weak=False,
                                dispatch_uid="dispatch.runtime.backend._on_worker_init")


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is not None and getattr(app, "dispatch_settings", None) is not None:
        app._dispatch_on_worker = True  # backends made from now on (one per pool thread) ride out outages
