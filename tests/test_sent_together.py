"""A completion's sends go to the broker together (``tasks.support.sent_together``, ``runtime.transport``).

One message cost a worker two round trips (the LPUSH, its ``task-sent`` PUBLISH); in
a batch they go in one MULTI/EXEC.  Against a private redis-server: the messages
arrive whole, in order, with their events, only when the block ends, and even when
the block ends in an exception (``Task.replace`` ends in ``Ignore``); a batch that
a full Redis refuses is sent again, each message once, when memory is freed.
"""
from __future__ import annotations

import base64
import json
import threading
import time

import pytest
import redis
from celery.exceptions import Ignore

from dispatch.config import Settings
from dispatch.runtime.app import create_app
from dispatch.tasks.agents import agent_signature
from dispatch.tasks.names import agent_queue
from dispatch.tasks.sending import ShortSender, batch_producer, sent_together

pytestmark = [pytest.mark.redis]
PREFIX = "sent-together"


@pytest.fixture
def broker(redis_server):
    settings = Settings.from_env({"DISPATCH_BROKER_URL": redis_server.url, "DISPATCH_KEY_PREFIX": PREFIX,
                                  "DISPATCH_RECONNECT_TIMEOUT_S": "20"})
    app = create_app(settings)
    client = redis.Redis.from_url(redis_server.url)
    queue = f"{PREFIX}:{agent_queue(PREFIX)}"
    signatures(app, 1, run="warm")[0].delay()  # the queue's declaration, once per connection (two MULTIs)
    client.delete(queue)
    yield app, client, queue
    app.close()


def signatures(app, n: int, run: str = "run1") -> list:
    return [agent_signature(app, run, f"t{i}", 30).set(task_id=f"{run}-c{i}") for i in range(n)]


def queued_ids(client: redis.Redis, queue: str) -> list[str]:
    """The queued messages' task ids, in the order a worker takes them (BRPOP takes from the right)."""
    return [json.loads(raw)["headers"]["id"] for raw in reversed(client.lrange(queue, 0, -1))]


def calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_messages_sent_together_arrive_in_order_with_their_events_when_the_block_ends(broker):
    app, client, queue = broker
    events = client.pubsub()
    events.psubscribe("*celeryev*")
    events.get_message(timeout=1)
    lpush, execs = calls(client, "lpush"), calls(client, "exec")
    with sent_together(app):
        assert batch_producer() is not None
        for signature in signatures(app, 300):
            signature.delay()
        assert client.llen(queue) == 0  # nothing has left this process yet
    assert batch_producer() is None
    assert queued_ids(client, queue) == [f"run1-c{i}" for i in range(300)]
    # 300 messages and 300 events: 600 commands in transactions of at most 1000, not 600 round trips
    assert calls(client, "lpush") - lpush == 300 and calls(client, "exec") - execs == 1
    sent = []
    deadline = time.monotonic() + 5
    while len(sent) < 300 and time.monotonic() < deadline:
        message = events.get_message(timeout=0.5)
        if message and message["type"] == "pmessage":  # kombu's envelope, the event in its base64 body
            event = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
            if event["uuid"].startswith("run1-"):
                sent.append(event)
    assert [(e["type"], e["uuid"]) for e in sent] == [("task-sent", f"run1-c{i}") for i in range(300)]
    assert sent[0]["name"] == "dispatch.agent:t0"


def test_what_the_block_published_is_sent_even_when_it_ends_in_an_exception(broker):
    app, client, queue = broker
    with pytest.raises(Ignore):
        with sent_together(app):
            for signature in signatures(app, 5):
                signature.delay()
            raise Ignore("replaced")  # how Task.replace ends, after sending its chord
    assert queued_ids(client, queue) == [f"run1-c{i}" for i in range(5)]


def test_blocks_on_one_thread_nest_into_one_batch(broker):
    app, client, queue = broker
    with sent_together(app):
        outer = batch_producer()
        with sent_together(app):
            assert batch_producer() is outer
            signatures(app, 1)[0].delay()
        assert client.llen(queue) == 0
    assert client.llen(queue) == 1


def test_a_batch_a_full_redis_refuses_is_sent_again_each_message_once_when_memory_is_freed(broker):
    app, client, queue = broker
    sigs = signatures(app, 40)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", max(1, client.info("memory")["used_memory"] - 1024 * 1024))
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", "x")
    freed = threading.Timer(1.5, lambda: client.config_set("maxmemory", 0))
    freed.start()
    began = time.monotonic()
    try:
        with sent_together(app):
            for signature in sigs:
                signature.delay()
    finally:
        freed.cancel()
        client.config_set("maxmemory", 0)
    assert time.monotonic() - began >= 1.0  # it waited for memory instead of losing the batch
    assert queued_ids(client, queue) == [f"run1-c{i}" for i in range(40)]  # each once, in order


def normalized(raw: bytes, task_id: str) -> dict:
    """A queued message with what differs between two sends of one task put aside: its delivery tag."""
    message = json.loads(raw)
    message["properties"].pop("delivery_tag")
    message["body"] = json.loads(base64.b64decode(message["body"]))
    assert message["headers"]["id"] == task_id
    return message


@pytest.mark.parametrize("extra", [{}, {"replaced_task_nesting": 1}], ids=["a-completion", "a-chord-header"])
def test_the_short_path_publishes_the_message_and_event_celery_would(broker, monkeypatch, extra):
    """Inside a batch an agent send builds its message with Celery's builder and publishes it without Celery's
    per-message path (``tasks.sending.ShortSender``): a completion's send, both ways, must give the same
    message and ``task-sent`` event."""
    app, client, queue = broker
    events = client.pubsub()
    events.psubscribe("*celeryev*")
    events.get_message(timeout=1)
    chord = app.signature("dispatch.collect", args=("run1",)).set(task_id="run1-phase4")
    as_celery, as_ours = (agent_signature(app, "run1", "t1", 30).set(
        task_id=cid, group_id="g1", group_index=0, chord=dict(chord), root_id="run1-root", **extra)
        for cid in ("a", "b"))
    for signature in (as_celery, as_ours):
        signature.freeze()
    short = []
    monkeypatch.setattr(ShortSender, "send", lambda self, *args, _send=ShortSender.send: (short.append(args[0]),
                                                                                        _send(self, *args)))
    as_celery.delay()  # no batch open: Celery's send_task
    with sent_together(app):
        as_ours.delay()  # the short way
    assert short == ["dispatch.agent"]
    raw_celery, raw_ours = reversed(client.lrange(queue, 0, -1))
    celery_message, our_message = normalized(raw_celery, "a"), normalized(raw_ours, "b")
    for message in (celery_message, our_message):
        message["headers"]["id"] = message["properties"]["correlation_id"] = "ID"
    assert our_message == celery_message
    sent = []
    deadline = time.monotonic() + 5
    while len(sent) < 2 and time.monotonic() < deadline:
        message = events.get_message(timeout=0.5)
        if message and message["type"] == "pmessage":
            envelope = json.loads(message["data"])
            envelope["properties"].pop("delivery_tag")
            envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
            sent.append(envelope)
    assert [e["body"]["uuid"] for e in sent] == ["a", "b"]
    assert sent[1]["body"]["clock"] > sent[0]["body"]["clock"]
    for envelope in sent:
        for volatile in ("uuid", "clock", "timestamp", "utcoffset"):
            envelope["body"].pop(volatile)
    assert sent[1] == sent[0]


def test_the_sends_bench_measures_the_three_ways_side_by_side(redis_server):
    """``bench/bench_sends.py`` (P9) runs, and names the three ways it compares (no timing is asserted)."""
    from bench.bench_sends import run

    rows = run(sends=30, rounds=2)
    assert [row["name"].split(" (")[0] for row in rows] == [
        "P9 sending an agent message one by one", "P9 sending an agent message batched",
        "P9 sending an agent message short"]
    assert all(row["value"] > 0 for row in rows) and rows[0]["ratio"] == 1.0
