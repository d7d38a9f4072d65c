"""A worker gives the memory of a whole-run task back to the system once the task ends.

Why: the phase tasks and the collect step each hold a run's whole state for a
moment (100k tasks: hundreds of MB of pydantic objects).  Freed, that memory
stays in the process (the C heap is only returned from its top, and arenas
with one live object stay), so a worker's RSS would keep the peak of the
largest run it ever closed.  After those tasks only (never after an agent
task: they are small and many), a full collection and glibc's ``malloc_trim``
hand it back.  Elsewhere than glibc the trim is skipped.

Celery's own per-name count of accepted tasks (``celery.worker.state.total_count``, what
``celery inspect stats`` shows as ``total``) is keyed by the name a message shows, and an agent
task's is its shadow (``dispatch.agent:<task_id>``): one entry per task id a worker ever ran, for
good.  As messages arrive those entries are folded into one ``dispatch.agent`` count (``fold_agent_counts``).

A worker (not the embedded one) also releases once it has been idle for a moment
after its process grew (``idle_releaser``): the agent tasks that follow phase
4's start, and a run whose whole-run tasks each grew it a little, leave freed
heap no whole-run task comes after to give back.  It does so as well while it
holds more than ``IDLE_ABOVE_START_BYTES`` over what it held before its first
run: memory freed after the last release (a collect step's results, the send
bursts) is not growth since that release, and was kept.

A worker also fixes glibc's mmap threshold at its default (128 KiB,
``bound_mmap_threshold``).  glibc raises it after each large block it frees (up
to 32 MB), so the next chunk texts and messages of a run come from the heap
instead, where one long-lived block between them keeps their pages: measured,
a worker's malloc heap held 22-48 MB free after one or two 10k-task runs
(``mallinfo2``), 4-15 MB with the threshold fixed.  Large blocks then come from
``mmap`` each time and go back when freed; a run has few of them (chunks of a
thousand tasks), an agent task none.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
import time
from typing import Any, Callable, Optional

from celery.signals import task_postrun, task_prerun, task_received, worker_init, worker_ready
from celery.worker import state as worker_state

from dispatch.tasks.names import AGENT_TASK, COLLECT_TASK, PHASE_TASK_NAMES, agent_shadow

WHOLE_RUN_TASKS = frozenset((*PHASE_TASK_NAMES, COLLECT_TASK))
_trim: Optional[Callable[[int], int]] = None
_installed = False


def _malloc_trim() -> Optional[Callable[[int], int]]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
        return None


def release() -> None:
    """Collect garbage and return the freed heap to the system."""
    global _trim
    gc.collect()
    if _trim is None:
        _trim = _malloc_trim() or (lambda pad: 0)
    _trim(0)


RELEASE_GROWTH_BYTES = 32 * 1024 * 1024  # below this growth since the last release, nothing worth returning
_rss_after_release = 0
_rss_at_start = 0  # before the process's first run (``install``, then a worker's ready)


def rss_bytes() -> int:
    """This process's resident set now (Linux ``/proc``; 0 elsewhere: then every whole-run task releases)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _after_task(sender: Any = None, task: Any = None, **_: Any) -> None:
    global _rss_after_release
    if getattr(task or sender, "name", None) in WHOLE_RUN_TASKS:
        # a full collection walks every object of the process (~50 ms even for a one-task run, three times
        # a run): only when the run grew the process enough for a trim to give something back
        rss = rss_bytes()
        if not rss or rss - _rss_after_release > RELEASE_GROWTH_BYTES:
            release()
            _rss_after_release = rss_bytes()


IDLE_S = 1.0  # no task running or ended for this long: the worker is idle
IDLE_RELEASE_BYTES = 4 * 1024 * 1024  # growth since the last release that an idle worker gives back
IDLE_ABOVE_START_BYTES = 16 * 1024 * 1024  # or held over its start: an idle worker releases once per burst
_busy = {"running": 0, "ended": 0, "last_end": 0.0}
_busy_lock = threading.Lock()


def _task_began(**_: Any) -> None:
    with _busy_lock:
        _busy["running"] += 1


def _task_ended(**_: Any) -> None:
    with _busy_lock:
        _busy["running"] -= 1
        _busy["ended"] += 1
        _busy["last_end"] = time.monotonic()


def idle_release(seen: int) -> int:
    """One check of the idle releaser: releases when tasks ended since ``seen`` (a count), none runs now,
    the last ended ``IDLE_S`` ago and the process grew by ``IDLE_RELEASE_BYTES``; returns the count seen."""
    global _rss_after_release
    with _busy_lock:
        ended, running, last_end = _busy["ended"], _busy["running"], _busy["last_end"]
    if ended == seen or running > 0 or time.monotonic() - last_end < IDLE_S:
        return seen
    rss = rss_bytes()
    if not rss or rss - _rss_after_release > IDLE_RELEASE_BYTES or rss - _rss_at_start > IDLE_ABOVE_START_BYTES:
        release()
        _rss_after_release = rss_bytes()
    return ended


def idle_releaser(stop: threading.Event, every_s: float = IDLE_S) -> None:
    seen = 0
    while not stop.wait(every_s):
        seen = idle_release(seen)


M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h); setting it turns glibc's dynamic threshold off
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own default


def bound_mmap_threshold() -> bool:
    """glibc's mmap threshold fixed at its default (see the module's docstring); False elsewhere than glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def _note_ready_size(**_: Any) -> None:
    global _rss_at_start
    _rss_at_start = rss_bytes() or _rss_at_start  # its pool and connections up, no run yet


def _start_idle_releaser(**_: Any) -> None:
    bound_mmap_threshold()
    worker_ready.connect(_note_ready_size, weak=False, dispatch_uid="dispatch.runtime.memory._note_ready_size")
    task_prerun.connect(_task_began, weak=False, dispatch_uid="dispatch.runtime.memory._task_began")
    task_postrun.connect(_task_ended, weak=False, dispatch_uid="dispatch.runtime.memory._task_ended")
    threading.Thread(target=idle_releaser, args=(threading.Event(),), daemon=True,
                     name="dispatch-idle-release").start()


FOLD_AT = 256  # distinct names in Celery's count before the agent tasks' are folded into one
_SHADOW_PREFIX = agent_shadow("")


def fold_agent_counts(counts: Any = None) -> None:
    """Celery's per-name count of accepted tasks, with every agent task's shadow name counted as
    ``dispatch.agent``.  Pool threads add to it meanwhile: its names are read at once (``list``), and a
    count added under a shadow name after it was read is folded the next time."""
    counts = worker_state.total_count if counts is None else counts
    names = [name for name in list(counts) if isinstance(name, str) and name.startswith(_SHADOW_PREFIX)]
    folded = sum(counts.pop(name, 0) for name in names)
    if folded:
        counts[AGENT_TASK] += folded


def _fold_when_many(**_: Any) -> None:
    if len(worker_state.total_count) > FOLD_AT:
        fold_agent_counts()


def install() -> None:
    """Release after every whole-run task of this process (a worker, or the embedded one), and on a
    worker when it goes idle after growing; idempotent."""
    global _installed, _rss_after_release, _rss_at_start
    if not _installed:
        _rss_after_release = _rss_at_start = rss_bytes()  # what it holds before any run: nothing to give back
        task_postrun.connect(_after_task, weak=False)
        task_received.connect(_fold_when_many, weak=False, dispatch_uid="dispatch.runtime.memory._fold_when_many")
        worker_init.connect(_start_idle_releaser, weak=False,
                            dispatch_uid="dispatch.runtime.memory._start_idle_releaser")
        _installed = True
