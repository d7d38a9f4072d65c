"""What every task body asks of its app: the deployment it runs in (built once per app and process),
and a way to send many messages together."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

from celery.utils.log import get_logger

from dispatch.config import Settings
from dispatch.store import Deployment, ride_out_outages


def deployment_of(app: Any) -> Deployment:
    deployment = getattr(app, "_dispatch_deployment", None)
    if deployment is None:
        settings = getattr(app, "dispatch_settings", None) or Settings.from_env()
        if not settings.embedded:
            ride_out_outages(app.backend.client, settings.reconnect_timeout_s)
        deployment = Deployment(settings, app.backend.client)
        app._dispatch_deployment = deployment
    return deployment


# The producer whose publish batch is open on this thread (``sent_together``); the app's
# ``producer_or_acquire`` hands it to every publish made meanwhile (``runtime.app.DispatchCelery``).
_batch = threading.local()
logger = get_logger(__name__)
BATCH_MAX_COMMANDS = 1000  # a message and its task-sent event are two


def batch_producer() -> Any:
    return getattr(_batch, "producer", None)


@contextmanager
def sent_together(app: Any) -> Iterator[None]:
    """Every message this thread publishes in the block (a completion's sends and their ``task-sent``
    events, phase 4's first chord) goes to the broker together when the block ends, one round trip per
    ``BATCH_MAX_COMMANDS``, instead of two round trips a message: about half the CPU of a send on a
    worker.  Sent at the end even when the block raises (``Task.replace`` ends in ``Ignore``), as the same
    publishes one at a time would have been sent by then.  A transport without batches sends at once."""
    if batch_producer() is not None:
        yield
        return
    with app.producer_or_acquire() as producer:
        if not producer.supports_batch_publish:
            yield
            return
        batch = producer.batch(max_size=BATCH_MAX_COMMANDS)
        batch.__enter__()
        _batch.producer = producer
        try:
            yield
        except BaseException:
            _batch.producer = None
            try:
                batch.__exit__(None, None, None)
            except Exception as exc:  # noqa: BLE001 - the block's own error is the one to raise
                logger.warning("messages sent together were not all sent: %s: %s", type(exc).__name__, exc)
            raise
        _batch.producer = None
        batch.__exit__(None, None, None)  # flushes; a failed flush is replayed by the transport
