"""The dispatch worker app, made to die at the worst moment of a completion (for test_faults).

``celery -A crash_worker worker`` (with ``tests/`` on PYTHONPATH): the first time
the task named by ``CRASH_AFTER_TASK`` has been recorded as finished and has
taken the tasks it unblocked, but before it sends them, the whole node exits
(``CRASH_MARKER`` is created first, so the test knows it happened).
"""
import os

from dispatch import scheduler
from worker import app  # noqa: F401 - the app Celery loads

_finish = scheduler.DagScheduler.finish


def finish_then_die(self, result, send=None):
    completion = _finish(self, result, send)
    marker = os.environ["CRASH_MARKER"]
    if result.task_id == os.environ["CRASH_AFTER_TASK"] and completion.sends and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # no ack, no send: only the outbox knows what this completion took
    return completion


scheduler.DagScheduler.finish = finish_then_die
