"""The Celery application, built from ``Settings`` for either mode.

Embedded (no ``DISPATCH_BROKER_URL``): an in-memory broker and a Redis result
backend served by in-process fakeredis, so chords, ``add_to_chord`` and the
scheduler run exactly the code they run against a real Redis.  (Measured on
this machine: fakeredis as the *broker* loses its consumer connection, and the
``cache+memory://`` backend polls chords 20x slower, hence this pairing.)

Distributed: the broker and backend from the environment; workers are
``celery -A worker worker`` processes anywhere.
"""
from __future__ import annotations

from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from kombu import Exchange, Queue

from dispatch.config import Settings
from dispatch.runtime import backend, limits, shutdown, telemetry, visibility, watchdog
from dispatch.runtime.backend import WorkerRedisBackend
from dispatch.runtime.embedded import EmbeddedRedisBackend
from dispatch.tasks import sending
from dispatch.tasks.names import AGENT_QUEUE, AGENT_TASK, PHASE_QUEUE, agent_queue, phase_queue

__all__ = ["AGENT_QUEUE", "PHASE_QUEUE", "create_app"]

FULL_REDIS_TRANSPORT = "dispatch.runtime.transport:Transport"
# Celery's built-in tasks a dispatch worker never needs; a message naming one is refused as unregistered
UNUSED_BUILTINS = ("celery.backend_cleanup",)


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Redelivery of late-acked messages whose worker died (Redis broker; RabbitMQ redelivers on its own).

    A message unacked for ``visibility_timeout`` goes back to its queue; the
    sweep that does it runs every ``unacked_restore_interval`` seconds, so it
    is scaled to the timeout instead of kombu's fixed 100 s, and so is the
    expiry of the sweep's lock.
    """
    timeout = settings.visibility_timeout_s
    # the sweep holds a lock in Redis; a worker killed (or a Redis restarted) while it held it would leave
    # it for kombu's default 300 s, and nothing would be restored meanwhile (found by bench/chaos.py)
    return {"visibility_timeout": timeout, "unacked_restore_interval": max(1, min(10, timeout // 4)),
            "unacked_restore_throttle": 1, "unacked_mutex_expire": max(5, min(60, timeout // 2))}


class ShadowNamedAMQP(AMQP):
    """Celery's messaging, with the ``task-sent`` event named like the task's other events.

    An agent task is sent under its readable name (``shadow``: ``dispatch.agent:TASK_ID``), which the
    worker's events carry, but Celery names the sent event after the task itself; Flower keeps the
    name of whichever event came last, so a task's name flipped between the two.
    """

    def as_task_v2(self, *args: Any, **kwargs: Any) -> Any:
        message = super().as_task_v2(*args, **kwargs)
        shadow = message.headers.get("shadow")
        if shadow and message.sent_event:
            message.sent_event["name"] = shadow
        return message


class DispatchCelery(Celery):
    """Celery, whose publishes on a thread that opened a batch (``tasks.sending.sent_together``) go into
    that batch's producer (``Task.replace``'s chord and ``Signature.delay`` acquire one of their own), an
    agent task's there the short way (``tasks.sending.ShortSender``)."""

    def producer_or_acquire(self, producer: Any = None) -> Any:
        return super().producer_or_acquire(producer if producer is not None else sending.batch_producer())

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        sender = sending.short_sender(self, name, options)
        if sender is None:
            return super().send_task(name, args, kwargs, **options)
        sender.send(name, args, kwargs, options)
        # no trail on the sending task (``add_to_parent``): agent tasks keep no Celery result to link
        result = (options.get("result_cls") or self.AsyncResult)(options["task_id"])
        result.ignored = options.get("ignore_result")
        return result


def drop_unused_builtins(sender: Celery, **_: Any) -> None:
    for name in UNUSED_BUILTINS:
        sender.tasks.pop(name, None)


def deployment_prefix(settings: Settings) -> str:
    """What every key Celery and kombu write starts with (queues, results, chords, bookkeeping): the
    deployment's own, so deployments sharing one Redis are isolated (their documented ``global_keyprefix``)."""
    return f"{settings.key_prefix}:"


def create_app(settings: Settings) -> Celery:
    telemetry.install()  # a no-op unless OTEL_* is set and the [otel] extra is installed
    limits.install_on_workers()  # the deployment's provider rate limiter, on each worker that starts
    if settings.embedded:
        app = DispatchCelery("dispatch", broker="memory://", backend=EmbeddedRedisBackend,
                             set_as_current=False, amqp=ShadowNamedAMQP)
        app.conf.broker_transport_options = {"polling_interval": 0.005}
        # memory://, woken by each publish and ack instead of polling (dispatch.runtime.embedded_transport)
        app.conf.broker_transport = "dispatch.runtime.embedded_transport:Transport"
    else:
        # a Redis backend's clients ride out a lost or full Redis on workers, one per pool thread (runtime/backend.py)
        on_redis = str(settings.result_backend).startswith(("redis://", "rediss://"))
        app = DispatchCelery("dispatch", broker=settings.broker_url, set_as_current=False, amqp=ShadowNamedAMQP,
                             backend=WorkerRedisBackend if on_redis else settings.result_backend)
        if on_redis:
            backend.install_on_workers()
        shutdown.install_on_workers()  # a phase body blocked past its timeout never holds up a stopping worker
        app.conf.broker_transport_options = broker_transport_options(settings)
        if settings.broker_url.startswith(("redis://", "rediss://")):
            app.conf.broker_transport_options["global_keyprefix"] = deployment_prefix(settings)
            visibility.install_on_workers()  # warns when an agent may outlive the visibility timeout
            watchdog.install_on_workers()  # lost messages (a worker killed mid-delivery) are sent again
        if settings.broker_url.startswith("redis://"):
            # kombu's Redis transport, riding out a full Redis instead of exiting (dispatch.runtime.transport);
            # rediss:// keeps kombu's own: the scheme is what selects its TLS connection
            app.conf.broker_transport = FULL_REDIS_TRANSPORT
            app.conf.broker_transport_options["dispatch_oom_wait_s"] = settings.reconnect_timeout_s
        # give up on a lost backend within ~2 s: the CLI rides out outages in its own loop (with a message)
        # and workers retry each command for reconnect_timeout_s (dispatch.store.ride_out_outages)
        app.conf.result_backend_transport_options = {
            "global_keyprefix": deployment_prefix(settings),
            "retry_policy": {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}}
    phases, agents = phase_queue(settings.key_prefix), agent_queue(settings.key_prefix)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_queues=[Queue(q, Exchange(q, type="direct"), routing_key=q) for q in (phases, agents)],
        task_default_queue=phases,
        task_default_exchange=phases,
        task_default_routing_key=phases,
        # by queue only: Celery then publishes to the queue directly (the anonymous exchange), where a
        # named exchange costs a binding lookup in Redis on every send
        task_routes={AGENT_TASK: {"queue": agents}},
        # a killed worker's agent task goes back to the queue instead of vanishing
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # a redelivered message whose task already succeeded is acked, not run again
        worker_deduplicate_successful_tasks=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        # embedded: no one can listen (the broker is this process's memory), and each event cost a publish
        task_send_sent_event=settings.task_events and not settings.embedded,
        worker_send_task_events=settings.task_events and not settings.embedded,
        result_extended=True,
        result_expires=settings.state_ttl_s,
        broker_connection_retry_on_startup=True,
        # a task publishing its dependents while the broker restarts waits for it (about reconnect_timeout_s)
        task_publish_retry_policy={"max_retries": max(3, int(settings.reconnect_timeout_s // 2) + 3),
                                   "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0},
        worker_hijack_root_logger=False,
        # URLs stay out of the conf: `celery inspect conf` and Flower show it, and it censors only some keys
        dispatch_settings=settings.model_dump(exclude={"broker_url", "result_backend", "state_url"}),
    )
    app.dispatch_settings = settings  # what dispatch.tasks.support.deployment_of reads, URLs included
    app.conf.include = ["dispatch.tasks"]
    import dispatch.tasks  # noqa: F401 - registers the shared tasks with this app

    app.on_after_finalize.connect(drop_unused_builtins, weak=False)

    return app
