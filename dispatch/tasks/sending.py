"""Phase 4's agent messages, sent together and the short way.

Why: a completion that unblocks many tasks (phase 4's first sends and every
completion after it take up to ``TAKE_MAX`` each) spent most of a worker's time
in ``Signature.delay``, once per agent task (py-spy on a 10k-task run: over
half of the agent tasks' GIL time).  A message cost two round trips (its LPUSH,
its ``task-sent`` PUBLISH); Celery's ``send_task`` merged and routed its options
again; kombu's ``Producer.publish`` declared the queue again (binding a copy of
it to the channel each time) inside ``connection.ensure``; the event was a
second such publish; and ``saferepr`` wrote the arguments' repr.  Measured
(``bench/bench_sends.py``, CPU per send, one thread): about 900 us one by one,
450 us batched, 200 us batched the short way.

- ``sent_together(app)``: every publish this thread makes in the block goes
  into one kombu publish batch (``Producer.batch``), flushed when the block
  ends, in one MULTI/EXEC per ``BATCH_MAX_COMMANDS`` commands; a failed flush is
  replayed a message at a time (``runtime.transport.PublishBatch``).
- ``ShortSender``: inside such a block an agent task's ``send_task`` (the app's,
  ``runtime.app.DispatchCelery``) builds its message with Celery's own builder
  (``amqp.as_task_v2``: the same headers, body and sent event), sends the
  ``before_task_publish``/``after_task_publish`` signals as ``send_task`` does
  (OpenTelemetry puts its trace context into the headers there), and publishes
  through ``Producer.publish`` with the queue and the event exchange declared
  once per batch; the ``task-sent`` event is built as Celery's
  ``EventDispatcher`` builds it.  ``tests/test_sent_together.py`` holds a
  message sent each way side by side.  Anything unusual in a send (an ETA, a
  link, a priority, another task) goes through Celery's ``send_task``.

A transport without publish batches (RabbitMQ, the embedded in-memory broker)
sends each message at once, through Celery's ``send_task``.
"""
from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from celery import signals
from celery.events.event import Event
from celery.utils.log import get_logger
from celery.utils.time import utcoffset

from dispatch.tasks.names import AGENT_TASK

logger = get_logger(__name__)
BATCH_MAX_COMMANDS = 1000  # a message and its task-sent event are two
_batch = threading.local()  # this thread's open batch: ``producer`` and its ``sender``


def batch_producer() -> Any:
    """The producer whose publish batch is open on this thread (``sent_together``), or None."""
    return getattr(_batch, "producer", None)


@contextmanager
def sent_together(app: Any) -> Iterator[None]:
    """Every message this thread publishes in the block (a completion's sends and their ``task-sent``
    events, phase 4's first chord) goes to the broker when the block ends, together.  Sent even when the
    block raises (``Task.replace`` ends in ``Ignore``), as the same publishes one at a time would have been
    sent by then.  A transport without publish batches sends each at once."""
    if batch_producer() is not None:
        yield
        return
    with app.producer_or_acquire() as producer:
        if not producer.supports_batch_publish:
            yield
            return
        batch = producer.batch(max_size=BATCH_MAX_COMMANDS)
        batch.__enter__()
        _batch.producer, _batch.sender = producer, None
        try:
            yield
        except BaseException:
            _batch.producer = _batch.sender = None
            try:
                batch.__exit__(None, None, None)
            except Exception as exc:  # noqa: BLE001 - the block's own error is the one to raise
                logger.warning("messages sent together were not all sent: %s: %s", type(exc).__name__, exc)
            raise
        _batch.producer = _batch.sender = None
        batch.__exit__(None, None, None)  # flushes; a failed flush is replayed by the transport


# What an agent send may carry to take the short way (None values aside): what ``agent_signature``,
# ``add_to_chord``, a chord's header (its parts' ``replaced_task_nesting``: phase 4 replaced itself by
# the chord) and ``Task.apply_async`` set (the task's serializer, the worker's reply_to).  Anything else is
# Celery's to handle.
SHORT_OPTIONS = frozenset({"task_id", "queue", "group_id", "group_index", "chord", "root_id", "parent_id",
                           "shadow", "time_limit", "soft_time_limit", "producer", "add_to_parent", "result_cls",
                           "task_type", "ignore_result", "retries", "replaced_task_nesting", "reply_to",
                           "serializer"})


def short_sender(app: Any, name: str, options: dict) -> Optional["ShortSender"]:
    """This thread's short sender, when a batch is open and the send is a plain agent send; else None."""
    producer = batch_producer()
    if producer is None or name != AGENT_TASK or not options.get("task_id") or not options.get("queue"):
        return None
    if any(v is not None for k, v in options.items() if k not in SHORT_OPTIONS):
        return None
    if options.get("producer") not in (None, producer) \
            or options.get("serializer") not in (None, app.conf.task_serializer):
        return None
    sender = getattr(_batch, "sender", None)
    if sender is None or sender.app is not app:
        sender = _batch.sender = ShortSender(app, producer)
    return sender


PLAIN = re.compile(r"[A-Za-z0-9_.:@+-]{0,200}")


def plain_repr(value: Any) -> Optional[str]:
    """``repr`` of a tuple of plain ids, or of ``{}``: what Celery's ``saferepr`` writes for them (it was a
    third of a short send's time); None (Celery's own then) for anything else."""
    if type(value) is tuple and len(value) <= 4 and all(type(v) is str and PLAIN.fullmatch(v) for v in value):
        return repr(value)
    if type(value) is dict and not value:
        return "{}"
    return None


class ShortSender:
    """One batch's agent sends: what does not change between its messages is looked up once."""

    def __init__(self, app: Any, producer: Any) -> None:
        self.app = app
        self.producer = producer
        self.amqp = app.amqp
        conf = app.conf
        self.serializer = conf.task_serializer
        self.compression = conf.task_compression
        self.default_delivery_mode = conf.task_default_delivery_mode
        self.sent_events = bool(conf.task_send_sent_event)
        self.events = self.amqp._event_dispatcher  # the one Celery's send_task publishes task-sent with
        self.declared: set[str] = set()

    def declare(self, entity: Any) -> None:
        if entity.name not in self.declared:
            self.producer.maybe_declare(entity)
            self.declared.add(entity.name)

    def send(self, name: str, args: Any, kwargs: Any, options: dict) -> None:
        """``send_task``'s message for this send, published into the batch."""
        args, kwargs = tuple(args or ()), kwargs or {}
        task_id, queue = options["task_id"], options["queue"]
        if isinstance(queue, str):
            queue = self.amqp.queues[queue]
        self.declare(queue)
        root_id, parent_id = options.get("root_id"), options.get("parent_id")
        if not root_id or not parent_id:  # as send_task: from the task this runs in
            parent = self.app.current_worker_task
            if parent is not None:
                root_id = root_id or parent.request.root_id or parent.request.id
                parent_id = parent_id or parent.request.id
        headers, properties, body, sent_event = self.amqp.as_task_v2(
            task_id, name, args, kwargs, group_id=options.get("group_id"), group_index=options.get("group_index"),
            chord=options.get("chord"), reply_to=options.get("reply_to") or self.app.thread_oid,
            time_limit=options.get("time_limit"), soft_time_limit=options.get("soft_time_limit"),
            create_sent_event=self.sent_events, root_id=root_id,
            parent_id=parent_id, shadow=options.get("shadow"), ignore_result=options.get("ignore_result"),
            argsrepr=plain_repr(args), kwargsrepr=plain_repr(kwargs), retries=options.get("retries") or 0,
            replaced_task_nesting=options.get("replaced_task_nesting") or 0)
        delivery_mode = queue.exchange.delivery_mode or self.default_delivery_mode
        exchange, routing_key = "", queue.name  # a direct queue: Celery publishes to the anonymous exchange
        if signals.before_task_publish.receivers:
            signals.before_task_publish.send(sender=name, body=body, exchange=exchange, routing_key=routing_key,
                                             declare=[queue], headers=headers, properties=properties,
                                             retry_policy={})
        self.producer.publish(body, exchange=exchange, routing_key=routing_key, serializer=self.serializer,
                              compression=self.compression, retry=False, delivery_mode=delivery_mode,
                              declare=[], headers=headers, **properties)
        if signals.after_task_publish.receivers:
            signals.after_task_publish.send(sender=name, body=body, headers=headers, exchange=exchange,
                                            routing_key=routing_key)
        if sent_event:
            sent_event.update(queue=queue.name, exchange=exchange, routing_key=routing_key)
            self.event("task-sent", sent_event)

    def event(self, kind: str, fields: dict) -> None:
        """Celery's ``EventDispatcher.publish``: the same event, on this batch's producer."""
        dispatcher = self.events
        self.declare(dispatcher.exchange)
        event = Event(kind, hostname=dispatcher.hostname, utcoffset=utcoffset(), pid=dispatcher.pid,
                      clock=dispatcher.clock.forward(), **fields)
        self.producer.publish(event, routing_key=kind.replace("-", "."), exchange=dispatcher.exchange.name,
                              retry=False, declare=[], serializer=dispatcher.serializer, headers=dispatcher.headers,
                              delivery_mode=dispatcher.delivery_mode)
