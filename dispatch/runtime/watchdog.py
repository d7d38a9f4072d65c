"""The stall watchdog: every Redis-broker worker sends a lost phase-4 message again (``dispatch.store.stall``).

Why on workers, on a timer: a run submitted with ``--no-wait`` has no client
following it, and a lost message has nobody else to notice it; a run with no
worker left makes no progress anyway.  Every ``DISPATCH_STALL_CHECK_S`` a worker
looks at the runs whose phase 4 is under way and made no progress since its
last look (two counters: cheap for a run of any size); a send found lost on two checks
in a row (so a message that is merely between the queue and its unacked record
is never taken for lost) is sent again, under a per-run lock, with its own
Celery id, time limits and chord, so the chord still counts it once and the
claim in ``prepare`` keeps its agent from running twice.  A run whose tasks
have all run (the scheduler is quiet) while its chord stays open on two looks
lost a part of the chord itself (a duplicate send's message): its callback, the
collect step that closes phase 4 from the scheduler's records, is sent instead;
so is it when a collect step died while closing (its close's lease lapses within
``store.scheduler.CLOSE_LEASE_S``; its redelivery would find the close taken).
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from celery import signals

from dispatch.store import stall
from dispatch.tasks.agents import agent_signature
from dispatch.tasks.names import agent_queue
from dispatch.tasks.support import deployment_of

logger = logging.getLogger(__name__)
PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: queue keys of priorities other than 0
PRIORITY_STEPS = (3, 6, 9)
CLOSE = "<close>"  # a suspect that is not a send: a run's chord that will not close


class StallWatchdog:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.deployment = deployment_of(app)
        self.suspects: dict[tuple[str, str], int] = {}  # (run, Celery id) -> checks it was found lost in a row
        self.progress: dict[str, tuple[int, int]] = {}  # run -> (results, claims) at the last look
        self.stopped = threading.Event()

    def broker_keys(self) -> tuple[list[str], str]:
        """The agent queue's list keys and the unacked hash, as kombu names them under the deployment's prefix."""
        prefix = self.app.conf.broker_transport_options.get("global_keyprefix", "")
        queue = f"{prefix}{agent_queue(self.deployment.prefix)}"
        return [queue, *(f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS)], f"{prefix}unacked"

    def check_once(self) -> list[tuple[str, str, str]]:
        """One look at every run; returns the ``(run_id, task_id, celery_id)`` sent again (``(run_id, "", CLOSE)``
        for a chord closed)."""
        client, keys = self.deployment.redis, self.deployment.keys
        queues, unacked = self.broker_keys()
        resent, seen = [], set()
        progress = {}
        for run_id in stall.phase_4_runs(client, keys):
            # a run whose tasks still start or finish is not stalled: only a still one is looked at closely
            progress[run_id] = stall.progress(client, keys, run_id)
            if self.progress.get(run_id) != progress[run_id]:
                continue
            if self.deployment.scheduler(run_id).quiet():
                # nothing runs or waits, yet phase 4 is open: its chord lost a part (a duplicate send whose
                # message was lost) and its callback will never come; on the second look it is sent here.
                # Or a collect step is closing it now (its lease held): nothing to do.  A collect step whose
                # worker died while closing lets its lease lapse, and the close is sent here as well.
                if stall.close_claimed(client, keys, run_id):
                    continue
                seen.add((run_id, CLOSE))
                self.suspects[(run_id, CLOSE)] = self.suspects.get((run_id, CLOSE), 0) + 1
                if self.suspects[(run_id, CLOSE)] >= 2 and self.close(run_id):
                    resent.append((run_id, "", CLOSE))
                continue
            sends = stall.unaccounted_sends(client, keys, run_id)
            if not sends:
                continue
            present = stall.messages_present(client, sends, queues, unacked)
            by_task: dict[str, list[str]] = {}
            for cid, tid in sends.items():
                by_task.setdefault(tid, []).append(cid)
            lost = {cid: tid for tid, cids in by_task.items() if not present.intersection(cids) for cid in cids}
            for cid in lost:
                seen.add((run_id, cid))
                self.suspects[(run_id, cid)] = self.suspects.get((run_id, cid), 0) + 1
            due = {cid: tid for cid, tid in lost.items() if self.suspects[(run_id, cid)] >= 2}
            if due:
                resent += self.resend(run_id, due)
        self.suspects = {k: v for k, v in self.suspects.items() if k in seen}
        self.progress = progress
        return resent

    def resend(self, run_id: str, lost: dict[str, str]) -> list[tuple[str, str, str]]:
        client, keys = self.deployment.redis, self.deployment.keys
        interval = self.deployment.settings.stall_check_s
        if not stall.lock(client, keys, run_id, interval):
            return []  # another worker's watchdog is at it
        context = stall.chord_context(client, keys, run_id)
        if context is None:
            logger.warning("run %s: %d phase-4 message(s) lost, but no chord of the run is recorded to send "
                           "them in", run_id, len(lost))
            return []
        group_id, chord = context
        # the last look, under the lock: a send claimed or queued meanwhile is not lost
        still = stall.unaccounted_sends(client, keys, run_id)
        lost = {cid: tid for cid, tid in lost.items() if cid in still}
        queues, unacked = self.broker_keys()
        lost = {cid: tid for cid, tid in lost.items() if cid not in stall.messages_present(client, lost, queues,
                                                                                            unacked)}
        limits = stall.limits(client, keys, run_id, set(lost.values()))
        done = []
        for cid, tid in sorted(lost.items(), key=lambda item: item[1]):
            signature = agent_signature(self.app, run_id, tid, limits.get(tid))
            signature.set(task_id=cid, group_id=group_id, chord=chord).apply_async()
            self.suspects.pop((run_id, cid), None)
            done.append((run_id, tid, cid))
        if done:
            logger.warning("run %s: sent %d lost phase-4 message(s) again: %s", run_id, len(done),
                           ", ".join(tid for _, tid, _ in done))
        return done

    def close(self, run_id: str) -> bool:
        """Send the callback of the run's phase-4 chord (its collect step, under phase 4's task id, so the
        run's chain and whoever waits on it go on); collect closes phase 4 from the scheduler's records,
        once: a late callback of the chord itself then stores nothing."""
        client, keys = self.deployment.redis, self.deployment.keys
        if not stall.lock(client, keys, run_id, self.deployment.settings.stall_check_s):
            return False
        context = stall.chord_context(client, keys, run_id)
        if context is None or stall.close_claimed(client, keys, run_id):
            return False  # a collect step already claimed the close (it may still be saving the run)
        if not self.deployment.scheduler(run_id).quiet():
            return False
        self.app.signature(context[1]).apply_async(args=([],))
        self.suspects.pop((run_id, CLOSE), None)
        logger.warning("run %s: phase 4 finished but its chord did not close (a part of it was lost, or its "
                       "closer died): sent its collect step", run_id)
        return True

    def run_forever(self) -> None:
        interval = self.deployment.settings.stall_check_s
        while not self.stopped.wait(interval):
            try:
                self.check_once()
            except Exception as exc:  # noqa: BLE001 - a broker or Redis outage: try again next time
                logger.debug("stall watchdog: %s: %s", type(exc).__name__, exc)


def install_on_workers() -> None:
    """Connect the handlers (``create_app`` calls this for each app it builds; Celery keeps one
    connection per ``dispatch_uid``, so calling it again connects nothing twice)."""
    signals.worker_ready.connect(_on_worker_ready, weak=False,
                                 dispatch_uid="dispatch.runtime.watchdog._on_worker_ready")
    signals.worker_shutdown.connect(_on_worker_shutdown, weak=False,
                                    dispatch_uid="dispatch.runtime.watchdog._on_worker_shutdown")


_watchdogs: dict[int, StallWatchdog] = {}


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    settings = getattr(app, "dispatch_settings", None)
    if settings is None or not str(settings.broker_url).startswith(("redis://", "rediss://")):
        return  # not a dispatch worker on a Redis broker (RabbitMQ redelivers on its own; embedded loses nothing)
    watchdog = StallWatchdog(app)
    _watchdogs[id(app)] = watchdog
    threading.Thread(target=watchdog.run_forever, name="dispatch-stall-watchdog", daemon=True).start()


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    for watchdog in _watchdogs.values():
        watchdog.stopped.set()
