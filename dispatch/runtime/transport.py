"""kombu's Redis transport, riding out a full Redis (``maxmemory`` reached under ``noeviction``).

Why: kombu counts redis-py's ``OutOfMemoryError`` (a ``ResponseError``) as a
channel error, which Celery's consumer does not recover from: every worker
exited ("Unrecoverable error") when Redis filled up mid-run.  Worse, a message
taken off its queue (BRPOP) whose unacked record then failed to be written was
lost.  This transport, selected by ``broker_transport`` (``runtime/app.py``):

- counts a full Redis as a connection error, so the consumer restarts and
  retries the way it does after a lost connection, instead of exiting;
- keeps a consumer restarting after a lost Redis from exiting on kombu's
  ``AttributeError`` when it closes a channel of the collected connection;
- retries the two writes a message cannot do without, its publish (``LPUSH``)
  and its unacked record, with the project's backoff for up to
  ``dispatch_oom_wait_s`` (``DISPATCH_RECONNECT_TIMEOUT_S``), logging one warning
  per outage, so nothing is lost or run twice while memory is freed.

It also gives each channel one Redis client for its writes: kombu builds a new
one (about 60 µs in redis-py 8) for every publish, unacked record, ack and event,
six or more per task, most of them on the worker's one consumer thread.

And its publish batches (kombu's ``Producer.batch``, which ``tasks.sending.sent_together``
opens around a completion's sends) go out in one MULTI/EXEC, and a batch that fails is
published again a message at a time, riding out a full or lost Redis as a single publish
does: kombu's own batch runs a plain pipeline once and then only says "delivery is
uncertain", which would leave a completer's dependents unsent.
"""
from __future__ import annotations

import functools
import logging
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator, TypeVar

from kombu.exceptions import BatchPublishError
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError, OutOfMemoryError, TimeoutError as RedisTimeout

from dispatch.common.backoff import backoff_delay

logger = logging.getLogger(__name__)
T = TypeVar("T")
OOM_BACKOFF_S, OOM_CAP_S = 0.1, 2.0
DEFAULT_OOM_WAIT_S = 60.0
_last_warning = 0.0  # one warning per outage (per ~minute), not one per retried write


def full_redis_message(maxmemory: Any = None) -> str:
    """What a person is told when Redis refuses writes for lack of memory."""
    limit = f"maxmemory {maxmemory}" if maxmemory not in (None, "", 0, "0") else "maxmemory reached, eviction off"
    return f"Redis is out of memory ({limit}): it refuses writes until memory is freed or maxmemory is raised"


def ride_out_full_redis(write: Callable[[], T], wait_s: float, what: str) -> T:
    """``write()``, retried with backoff while Redis is full, for up to ``wait_s`` seconds."""
    global _last_warning
    deadline = time.monotonic() + max(0.0, wait_s)
    attempt = 0
    while True:
        try:
            return write()
        except OutOfMemoryError:
            if time.monotonic() >= deadline:
                raise
            if time.monotonic() - _last_warning > 60:
                _last_warning = time.monotonic()
                logger.warning("%s; retrying %s for up to %gs", full_redis_message(), what, wait_s)
            time.sleep(min(backoff_delay(attempt, OOM_BACKOFF_S, OOM_CAP_S), max(0.0, deadline - time.monotonic())))
            attempt += 1


def oom_wait_s(channel: Any) -> float:
    options = channel.connection.client.transport_options or {}
    return float(options.get("dispatch_oom_wait_s", DEFAULT_OOM_WAIT_S))


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: Any) -> None:
        # the message is already off its queue: without its unacked record it would be lost, not redelivered
        ride_out_full_redis(lambda: super(QoS, self).append(message, delivery_tag), oom_wait_s(self.channel),
                            "a delivered message's unacked record")

    def restore_unacked(self, client: Any = None) -> Any:
        if client is None and self.channel.connection.client is None:
            # closing a channel after its connection was already collected (the consumer restarting after
            # Redis went away): kombu would build a pool from the closed transport and raise AttributeError,
            # which no one catches and the worker exits (found by bench/chaos.py).  The messages stay in
            # the unacked hash; the visibility timeout's sweep on any worker restores them.
            logger.debug("unacked messages left to the visibility timeout: the connection is closed")
            self._delivered.clear()
            return None
        return super().restore_unacked(client)


REPLAY_BACKOFF_S, REPLAY_CAP_S = 0.2, 2.0


class PublishBatch(kombu_redis.PublishBatch):
    """kombu's batch in one transaction (all of it lands or none), keeping its commands until they did: a
    flush that fails is replayed command by command, each retried while Redis is full or unreachable for
    up to ``dispatch_oom_wait_s``.  A replayed message may land twice (a reply lost after the EXEC ran);
    a dispatch agent message is claimed before it runs and counted once by its chord."""

    def __init__(self, channel: Any, max_size: int) -> None:
        self.channel = channel
        self.max_size = max_size
        self._buffered = 0
        self._collecting = None
        self._failed = None
        self._aborted = False
        self._closed = False
        self._pending: list[tuple[str, tuple]] = []
        self._stack = ExitStack()
        try:
            self.client = self._stack.enter_context(channel.conn_or_acquire())
            self.pipeline = self._stack.enter_context(self.client.pipeline(transaction=True))
        except BaseException:
            self._stack.close()
            raise

    def publish(self, message: Any, **kwargs: Any) -> Any:
        """kombu's, noting each command as it enters the pipeline (what a failed flush replays)."""
        self._check_usable()
        commands: list[tuple[str, tuple]] = []
        self._collecting = commands
        try:
            result = self.channel.basic_publish(message, _publish_batch=self, **kwargs)
        finally:
            self._collecting = None
        if commands:
            if self._buffered and self._buffered + len(commands) > self.max_size:
                self.flush()
            for name, args in commands:
                getattr(self.pipeline, name)(*args)
                self._pending.append((name, args))
            self._buffered += len(commands)
            if self._buffered >= self.max_size:
                self.flush()
        return result

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        try:
            super().flush()
        except BatchPublishError as exc:
            self._failed = None  # usable again once replayed
            self.replay(pending, exc.__cause__)

    def discard(self) -> None:
        super().discard()
        self._pending = []

    def replay(self, commands: list[tuple[str, tuple]], cause: Any) -> None:
        logger.warning("a batch of %d publish commands failed (%s: %s); publishing them one at a time",
                       len(commands), type(cause).__name__, cause)
        wait_s = oom_wait_s(self.channel)
        for name, args in commands:
            command = functools.partial(getattr(self.client, name), *args)
            ride_out_lost_redis(functools.partial(ride_out_full_redis, command, wait_s, "publishing a message"),
                                wait_s)


def ride_out_lost_redis(write: Callable[[], T], wait_s: float) -> T:
    """``write()``, retried with backoff while Redis cannot be reached, for up to ``wait_s`` seconds
    (redis-py reconnects on the next command)."""
    deadline = time.monotonic() + max(0.0, wait_s)
    attempt = 0
    while True:
        try:
            return write()
        except (RedisConnectionError, RedisTimeout):
            if time.monotonic() >= deadline:
                raise
            time.sleep(min(backoff_delay(attempt, REPLAY_BACKOFF_S, REPLAY_CAP_S),
                           max(0.0, deadline - time.monotonic())))
            attempt += 1


class Channel(kombu_redis.Channel):
    QoS = QoS

    def create_publish_batch(self, max_size: int) -> PublishBatch:
        return PublishBatch(self, max_size)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """kombu's, but with one client for the channel's pool (a redis-py client is safe to share between
        threads: each command takes a connection from the pool) instead of a new one per call."""
        if client:
            yield client
            return
        pool = self.pool
        shared = self.__dict__.get("_dispatch_client")
        if shared is None or shared.connection_pool is not pool:  # the pools are remade after a lost Redis
            shared = self.__dict__["_dispatch_client"] = self._create_client()
        yield shared

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        ride_out_full_redis(lambda: super(Channel, self)._put(queue, message, **kwargs), oom_wait_s(self),
                            "publishing a message")


class Transport(kombu_redis.Transport):
    Channel = Channel
    connection_errors = kombu_redis.Transport.connection_errors + (OutOfMemoryError,)
