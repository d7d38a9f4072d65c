"""kombu's in-memory transport, woken by a put or an ack instead of polling: the embedded broker.

Why: the memory transport has no file descriptor to wait on, so Celery drives
it with its blocking loop, which sleeps ``polling_interval`` whenever its
queues are empty *or* its prefetch window is full.  Every dependent hop of
phase 4 (a task finishing, sending its dependent, the worker picking it up)
paid that sleep, and so did every slot freed by an ack: about 5 ms a hop and a
quarter of the threads idle at any time.  Here a publish, an ack or a reject
sets one process-wide event the loop waits on, so a message is taken the
moment it can be; the interval stays only as a safety net.

Same messages, queues and acknowledgement semantics as ``memory://`` (this
subclasses it); only the waiting changes.
"""
from __future__ import annotations

import socket
import threading
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import memory

WAKE = threading.Event()  # set by anything that may let the consumer take a message
SAFETY_POLL_S = 0.05  # a wake-up that was somehow missed costs at most this


class Channel(memory.Channel):
    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        super()._put(queue, message, **kwargs)
        WAKE.set()

    def _put_fanout(self, exchange: str, message: Any, routing_key: Any = None, **kwargs: Any) -> None:
        super()._put_fanout(exchange, message, routing_key, **kwargs)
        WAKE.set()

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        super().basic_ack(delivery_tag, multiple)
        WAKE.set()  # a prefetch slot is free again

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue)
        WAKE.set()


class Transport(memory.Transport):
    Channel = Channel

    def drain_events(self, connection: Any, timeout: Any = None) -> None:
        """kombu's loop (``virtual.Transport.drain_events``) with the sleep replaced by a wait on ``WAKE``."""
        started = monotonic()
        get = self.cycle.get
        while True:
            WAKE.clear()  # before looking: a put that lands after the look sets it again, so none is missed
            try:
                get(self._deliver, timeout=timeout)
            except Empty:
                left = None if timeout is None else timeout - (monotonic() - started)
                if left is not None and left <= 0:
                    raise socket.timeout()
                WAKE.wait(SAFETY_POLL_S if left is None else min(SAFETY_POLL_S, left))
            else:
                return
