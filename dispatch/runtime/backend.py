"""Celery's Redis result backend whose every client, on a worker, rides out a lost or full Redis.

Why: Celery builds one backend (and so one Redis client and pool) per thread,
so retrying only the client a task body first reached (``deployment_of``) left
the others bare: a threads-pool worker storing phase 4's progress from another
thread failed its task on the first ``OutOfMemoryError`` of a full Redis.  The
client is made here, so each one gets the retry (``ride_out_outages``) in a worker
process (``worker_init``), never in the CLI, which rides out outages in its own loop.

On a worker it also keeps no result it is not asked for.  Celery registers every
result of a group it freezes as waited for (the group's ready barrier), and a
chord's ``apply_chord`` builds one more such group: phase 4's header is agent
tasks, which store no result, so those registrations were never resolved and a
long-lived worker kept each phase 4's header results and their channel
subscriptions for good (the soak's +0.5 MB/min).  A worker registers a result
only when it waits on it (a join), and starts a chord without that extra group.
"""
from __future__ import annotations

from typing import Any

from celery import signals
from celery.backends.redis import RedisBackend
from celery.result import GroupResult

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

    def add_pending_result(self, result: Any, weak: bool = False, start_drainer: bool = True) -> Any:
        """On a worker, nothing: a result is registered when something waits on it (below).  Celery registers
        here every result of a group it freezes (the group's ready barrier: ``Task.replace`` of phase 4's
        chord, ``apply_chord``), and a worker's pub/sub connection is never read unless it waits: each such
        registration, resolved or not, stayed for good (the result, its channel subscription)."""
        if getattr(self.app, "_dispatch_on_worker", False):
            return result
        return super().add_pending_result(result, weak=weak, start_drainer=start_drainer)

    def wait_for_pending(self, result: Any, *args: Any, **kwargs: Any) -> Any:
        """``AsyncResult.get`` on a worker (where Celery allows a join): registered now, then waited for."""
        if getattr(self.app, "_dispatch_on_worker", False):
            super().add_pending_result(result)
        return super().wait_for_pending(result, *args, **kwargs)

    def iter_native(self, result: Any, *args: Any, **kwargs: Any) -> Any:
        """``ResultSet.join_native`` on a worker: its results registered now, then waited for."""
        if getattr(self.app, "_dispatch_on_worker", False):
            super().add_pending_results([r for r in result.results if not r.ready()])
        return super().iter_native(result, *args, **kwargs)

    def apply_chord(self, header_result_args: Any, body: Any, **kwargs: Any) -> None:
        """Celery's builds a ``GroupResult`` of the header only to see whether a part is itself a group (then
        it saves the header's structure).  That ``GroupResult``'s barrier registers every header result in this
        backend's pending map for good (and subscribes to its channel): phase 4's header parts store no
        result (``ignore_result``), so a long-lived worker kept each phase 4's header results (about 100
        bytes a task of its runs).  The same check on the bare results; a nested header still goes to Celery."""
        results = header_result_args[1]
        # a lazy header (a generator) Celery leaves alone as well
        if not isinstance(results, (list, tuple)) or not any(isinstance(r, GroupResult) for r in results):
            return None
        return super().apply_chord(header_result_args, body, **kwargs)


def install_on_workers() -> None:
    """Connect the handlers (``create_app`` calls this for each app it builds; Celery keeps one
    connection per ``dispatch_uid``, so calling it again connects nothing twice)."""
    signals.worker_init.connect(_on_worker_init, weak=False,
                                dispatch_uid="dispatch.runtime.backend._on_worker_init")


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is not None and getattr(app, "dispatch_settings", None) is not None:
        app._dispatch_on_worker = True  # backends made from now on (one per pool thread) ride out outages
