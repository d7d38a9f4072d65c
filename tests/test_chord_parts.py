"""Phase 4's chord counts its parts without keeping them (``runtime.backend.PhaseFourChordParts``).

Celery's Redis backend keeps every part's result in the chord and hands them all
to the callback: at 100k tasks, 12 MB in Redis, a worker reading them back, and a
4 MB message and result.  These drive the backend the way a worker's tracer does
(``on_chord_part_return`` per part) against fakeredis.
"""
from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from celery import Celery
from celery.app.task import Context

from dispatch.runtime.backend import PhaseFourChordParts
from dispatch.tasks.names import COLLECT_TASK

SERVER = fakeredis.FakeServer()


class Backend(PhaseFourChordParts):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("url", "redis://fake/0")
        super().__init__(*args, **kwargs)

    def _create_client(self, **params: Any) -> Any:
        return fakeredis.FakeRedis(server=SERVER)


@pytest.fixture
def backend(monkeypatch):
    client = fakeredis.FakeRedis(server=SERVER)
    client.flushall()
    app = Celery("chord-parts", broker="memory://", backend=Backend, set_as_current=False)
    b = app.backend
    sent: list[tuple[str, Any]] = []
    errors: list[str] = []
    monkeypatch.setattr("celery.canvas.Signature.delay", lambda sig, *args, **kw: sent.append((sig.task, args)))
    monkeypatch.setattr(b, "chord_error_from_stack", lambda callback, exc=None: errors.append(str(exc)))
    b.sent, b.errors, b.redis = sent, errors, client
    return b


def part(backend: Any, gid: str, tid: str, state: str = "SUCCESS", result: Any = None, body: str = COLLECT_TASK):
    request = Context(id=tid, group=gid, group_index=None, chord={"task": body, "args": ["run"], "kwargs": {},
                                                                  "options": {}, "subtask_type": None})
    backend.on_chord_part_return(request, state, result)


def test_the_parts_are_counted_not_kept_and_the_callback_gets_nothing_to_carry(backend):
    backend.set_chord_size("g1", 2)
    backend.add_to_chord("g1", None)  # a completion adds a third part
    part(backend, "g1", "a", result={"task_id": "a", "success": True})
    part(backend, "g1", "a", result={"task_id": "a", "success": None, "duplicate": True})  # redelivered
    part(backend, "g1", "b")
    assert backend.sent == [] and not backend.redis.exists(backend.get_key_for_group("g1", ".j"))
    assert backend.redis.scard(backend.get_key_for_group("g1", ".d")) == 2
    part(backend, "g1", "c")
    assert backend.sent == [(COLLECT_TASK, ([],))] and backend.errors == []
    # the chord's keys are gone but its done marker: a late duplicate part does nothing
    left = sorted(k.decode() for k in backend.redis.keys("*g1*"))
    assert left == [backend.get_key_for_group("g1", ".c").decode()]
    part(backend, "g1", "c")
    assert len(backend.sent) == 1


def test_a_failed_part_fails_the_chord_with_celerys_own_message(backend):
    backend.set_chord_size("g2", 2)
    part(backend, "g2", "killed", state="FAILURE", result=TimeoutError("TimeLimitExceeded(15,)"))
    part(backend, "g2", "fine")
    assert backend.sent == []
    [error] = backend.errors
    assert error.startswith("Dependency killed raised ") and "TimeLimitExceeded" in error


def test_other_chords_are_celerys(backend):
    backend.set_chord_size("g3", 1)
    part(backend, "g3", "x", result=7, body="someone.else")
    assert backend.sent == [("someone.else", ([7],))]
