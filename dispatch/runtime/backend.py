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

And it counts phase 4's chord parts without keeping them (``PhaseFourChordParts``):
Celery's Redis backend stores every part's result in the chord (a sorted set),
reads them all back when the last part lands and sends them to the callback as
its argument, so a 100k-task phase 4 left 100k results (about 12 MB) in Redis for
the run, took a worker the reading of all of them at the end, and made a 4 MB
message (and a 4 MB result, the callback's arguments, which the CLI then
fetched).  Phase 4's results are in its scheduler; the collect step reads them
there and ignores its argument.
"""
from __future__ import annotations

from functools import cached_property
from typing import Any

from celery import signals, states
from celery.backends.redis import RedisBackend
from celery.canvas import maybe_signature
from celery.exceptions import ChordError
from celery.result import GroupResult
from celery.utils.log import get_logger

from dispatch.store import ride_out_outages
from dispatch.tasks.names import COLLECT_TASK

logger = get_logger(__name__)

# One part of phase 4's chord lands: counted once (by its task id, as Celery's own script does); only a
# failed part's result is kept (the chord's error names it).  The part that completes the chord takes it
# (``done``, as Celery marks a finished chord, so a late duplicate part does nothing) and gets the kept
# failures; the chord's keys go with it.  Returns {parts seen, 0}, {-1, 0} (done already) or, to the
# completing part, {parts seen, 1, the failed parts' results...}.
# KEYS: 1 the kept results (Celery's join key), 2 the added parts (.t), 3 the size (.s), 4 the parts seen (.d),
#       5 done (.c).  ARGV: 1 the part (task id:index), 2 failed ("1"/"0"), 3 its result, 4 ordered ("1":
#       a sorted set, Celery's default, else a list), 5 its index, 6 the keys' expiry (0: none), 7 done's expiry
PHASE_FOUR_PART_LUA = """
if redis.call('GET', KEYS[5]) == 'done' then return {-1, 0} end
if redis.call('SADD', KEYS[4], ARGV[1]) == 1 and ARGV[2] == '1' then
  if ARGV[4] == '1' then redis.call('ZADD', KEYS[1], ARGV[5], ARGV[3]) else redis.call('RPUSH', KEYS[1], ARGV[3]) end
end
local ready = redis.call('SCARD', KEYS[4])
if tonumber(ARGV[6]) > 0 then
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[6]) end
end
local size = redis.call('GET', KEYS[3])
if not size or ready ~= tonumber(size) + tonumber(redis.call('GET', KEYS[2]) or '0') then return {ready, 0} end
if not redis.call('SET', KEYS[5], 'done', 'NX', 'EX', ARGV[7]) then return {-1, 0} end
local failed
if ARGV[4] == '1' then failed = redis.call('ZRANGE', KEYS[1], 0, -1) else failed = redis.call('LRANGE', KEYS[1], 0, -1) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
table.insert(failed, 1, 1)
table.insert(failed, 1, ready)
return failed
"""
DONE_EXPIRES_S = 300  # how long a finished chord says so (Celery keeps its own marker as long)


class PhaseFourChordParts(RedisBackend):
    """Phase 4's chord (its callback is the collect step) counted in O(1) memory; every other chord as
    Celery does it."""

    def on_chord_part_return(self, request: Any, state: str, result: Any, propagate: Any = None,
                             **kwargs: Any) -> Any:
        callback_json = getattr(request, "chord", None)
        if not isinstance(callback_json, dict) or callback_json.get("task") != COLLECT_TASK:
            return super().on_chord_part_return(request, state, result, propagate=propagate, **kwargs)
        tid, gid, index = request.id, request.group, request.group_index
        if not gid or not tid:
            return None
        index = "+inf" if index is None else index
        failed = state in states.PROPAGATE_STATES
        value = self.encode([1, tid, state, self.encode_result(result, state)]) if failed else ""
        keys = [self.get_key_for_group(gid, suffix) for suffix in (".j", ".t", ".s", ".d", ".c")]
        reply = self._phase_four_part(keys=keys, args=[f"{tid}:{index}", "1" if failed else "0", value,
                                                       "1" if self._chord_zset else "0", index,
                                                       int(self.expires or 0), DONE_EXPIRES_S],
                                      client=self.client)
        if int(reply[1]) != 1:
            return None  # not the last part (or the chord is done already)
        callback = maybe_signature(callback_json, app=self.app)
        try:
            for raw in reply[2:]:  # a failed part fails the chord, with Celery's own error ("Dependency ...")
                self._unpack_chord_result(raw, self.decode)
        except ChordError as exc:
            logger.error("Chord %r raised: %r", gid, exc)
            return self.chord_error_from_stack(callback, exc)
        try:
            callback.delay([])  # the collect step reads the results from the scheduler, not from here
        except Exception as exc:  # noqa: BLE001 - as Celery: the chord fails, the run is closed from outside
            logger.exception("Chord callback for %r raised: %r", gid, exc)
            return self.chord_error_from_stack(callback, ChordError(f"Callback error: {exc!r}"))
        return None

    @cached_property
    def _phase_four_part(self) -> Any:
        return self.client.register_script(PHASE_FOUR_PART_LUA)


class WorkerRedisBackend(PhaseFourChordParts):
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
