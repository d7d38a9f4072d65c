"""Installs the deployment's provider rate limiter on every dispatch worker, embedded ones included.

Model calls ask ``common.ratelimit.LIMITER`` for their slots; only a process
that runs tasks has a deployment to share them through.  So a worker of a
dispatch app, when it starts (Celery's ``worker_init``, sent by the worker
processes and by the embedded in-process worker alike), installs a
``store.limiter.RedisLimiter`` on the app's coordination Redis, and takes it
out again when it stops (``worker_shutdown``).  Prefork children inherit it.
"""
from __future__ import annotations

from typing import Any

from celery import signals

from dispatch.common.ratelimit import LIMITER
from dispatch.store.limiter import RedisLimiter
from dispatch.tasks.support import deployment_of


def install_on_workers() -> None:
    """Connect the handlers (``create_app`` calls this for each app it builds; Celery keeps one
    connection per ``dispatch_uid``, so calling it again connects nothing twice)."""
    signals.worker_init.connect(_on_worker_init, weak=False,
                                dispatch_uid="dispatch.runtime.limits._on_worker_init")
    signals.worker_shutdown.connect(_on_worker_shutdown, weak=False,
                                    dispatch_uid="dispatch.runtime.limits._on_worker_shutdown")


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is None or getattr(app, "dispatch_settings", None) is None:
        return  # not a dispatch app's worker
    deployment = deployment_of(app)
    limiter = RedisLimiter(deployment.redis, deployment.keys)
    sender._dispatch_limiter = limiter
    LIMITER.install(limiter)


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    limiter = getattr(sender, "_dispatch_limiter", None)
    if limiter is not None:
        LIMITER.uninstall(limiter)
