"""Phase 4 of an embedded run without Celery messages: the same agent task, run on threads of this process.

Why: embedded, every agent task paid Celery's whole path (a message built,
published, consumed, a request and a tracer, an ack) and its chord's two Redis
writes, for a broker that is this process's memory: about 3 ms of CPU a task
under the GIL, which held embedded mode near 300 no-op tasks/s.  Here phase 4's
task (``tasks.phases.fan_out``) hands its first tasks to ``run_phase_4``,
which runs each through the agent task's own body (``agent_task.run``, under a
request like the worker's: id, retries, hostname, time limits) on a pool of
daemon threads, and queues whatever a completion unblocks (``tasks.agents.send_next``)
instead of adding it to a chord.  When nothing is left running or queued, it
closes the phase with the chord's own callback (``finish_execution``), in the
phase-4 task, which returns the state's reference as it would have.

What stays the same: the scheduler's scripts decide what starts (``prepare``,
``finish``: claims, budgets, cancel, ``max_workers``), the ledger records every
task's Celery id, a transient failure is retried after its backoff with the
same id, and an exception escaping a task fails phase 4 the way a broken chord
does (the client closes it from the scheduler's records).  Celery's thread pool
enforced no time limits either, so an agent's own timeout is the limit here too.

``DISPATCH_EMBEDDED_EXECUTOR=celery`` keeps the chord path (a comparison, a fallback).
"""
from __future__ import annotations

import os
import threading
from collections import deque
from typing import Any, Optional

from celery.exceptions import Ignore, Retry

from dispatch.models import ExecutionPhase

from dispatch.tasks.agents import SOFT_LIMIT_GRACE_S, HARD_LIMIT_GRACE_S, agent_task, finish_execution


def enabled() -> bool:
    return os.environ.get("DISPATCH_EMBEDDED_EXECUTOR", "threads") != "celery"


class InlineRun:
    """One phase 4's queue of agent tasks and the threads that drain it."""

    def __init__(self, task: Any, run_id: str, threads: int) -> None:
        self.task = task  # the app's agent task: its body, its request stack
        self.run_id = run_id
        self.threads = max(1, threads)
        self.lock = threading.Lock()
        self.work = threading.Condition(self.lock)  # the drain threads wait here for a queued task
        self.over = threading.Condition(self.lock)  # ``run`` waits here for the end (nothing left, or an error)
        # (task id, Celery id, time limit, retries, the agent task's keyword arguments)
        self.queue: deque[tuple[str, str, Optional[float], int, dict]] = deque()
        self.outstanding = 0  # queued + running + waiting for a retry
        self.error: Optional[BaseException] = None
        self.hostname = ""

    def submit(self, task_id: str, celery_id: str, limit: Optional[float]) -> None:
        with self.lock:
            self.outstanding += 1
            self.queue.append((task_id, celery_id, limit, 0, {}))
            self.work.notify()

    def run(self, hostname: str) -> None:
        """Until every task queued (and everything they unblocked) has finished, or one raised."""
        self.hostname = hostname
        workers = [threading.Thread(target=self.drain, name=f"dispatch-agent-{i}", daemon=True)
                   for i in range(self.threads)]
        for worker in workers:
            worker.start()
        with self.lock:
            while self.outstanding > 0 and self.error is None:
                self.over.wait()
            self.work.notify_all()  # the idle threads see the end
        if self.error is not None:
            raise self.error

    def drain(self) -> None:
        while True:
            with self.lock:
                while not self.queue and self.outstanding > 0 and self.error is None:
                    self.work.wait()
                if not self.queue or self.error is not None:
                    return
                item = self.queue.popleft()
            self.execute(*item)

    def execute(self, task_id: str, celery_id: str, limit: Optional[float], retries: int, kwargs: dict) -> None:
        agent = self.task
        timelimit = (limit + SOFT_LIMIT_GRACE_S + HARD_LIMIT_GRACE_S, limit + SOFT_LIMIT_GRACE_S) if limit else None
        # the request a worker builds from the message, plus where this task's dependents go (send_next)
        args = (self.run_id, task_id)
        agent.push_request(id=celery_id, args=args, kwargs=kwargs, retries=retries, hostname=self.hostname,
                           is_eager=True, delivery_info={}, timelimit=timelimit, called_directly=False,
                           dispatch_inline=self)
        try:
            agent.run(*args, **kwargs)
        except Retry as retry:  # a transient failure: again after its backoff, as the broker would (same id)
            again = dict(retry.sig.kwargs) if retry.sig is not None else kwargs  # what it carries to the retry
            self.retry_later((task_id, celery_id, limit, retries + 1, again), float(retry.when or 0))
        except BaseException as exc:  # noqa: BLE001 - fails phase 4 like a broken chord
            with self.lock:
                self.error = self.error or exc
                self.over.notify_all()
                self.work.notify_all()
            return
        finally:
            agent.pop_request()
        self.done()

    def retry_later(self, item: tuple, delay: float) -> None:
        with self.lock:
            self.outstanding += 1  # counted before this attempt is done: the phase cannot end meanwhile
        timer = threading.Timer(max(0.0, delay), self._requeue, (item,))
        timer.daemon = True
        timer.start()

    def _requeue(self, item: tuple) -> None:
        with self.lock:
            self.queue.append(item)
            self.work.notify()

    def done(self) -> None:
        with self.lock:
            self.outstanding -= 1
            if self.outstanding <= 0:
                self.over.notify_all()
                self.work.notify_all()


def run_phase_4(task: Any, deployment: Any, run_id: str, header: list[Any], limits: dict[str, Any]) -> dict:
    """Phase 4's first signatures run here, to the end; then the phase is closed as the chord would."""
    threads = deployment.settings.embedded_concurrency
    inline = InlineRun(task.app.tasks[agent_task.name], run_id, threads)
    for signature in header:
        tid = signature.args[1]
        inline.submit(tid, signature.id, limits.get(tid))
    inline.run(task.request.hostname or "")
    try:
        return finish_execution(deployment, deployment.scheduler(run_id))
    except Ignore:
        # closed meanwhile by someone else (``dispatch cancel`` closes phase 4 from the scheduler's records):
        # this is the phase task itself, and the client waits for its result, so return what was saved
        stored = deployment.store.load(run_id)
        if stored is None or stored.result_for(ExecutionPhase.PARALLEL_EXECUTION) is None:
            raise
        return stored.ref().model_dump()
