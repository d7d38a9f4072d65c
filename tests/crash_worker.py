"""The dispatch worker app, made to die at the worst moments of a completion (for test_faults).

``celery -A crash_worker worker`` (with ``tests/`` on PYTHONPATH): the first time
the task named by ``CRASH_AFTER_TASK`` completes and unblocks others, the whole
node exits at ``CRASH_POINT``:

- ``finish``: its completion is recorded and the tasks it unblocked are taken,
  but none is sent yet;
- ``sent``: they are sent, but the outbox does not know it yet.

``CRASH_MARKER`` is created first, so the test knows it happened.
"""
import os

from dispatch.store import scheduler
from dispatch.runtime.worker import app  # noqa: F401 - the app Celery loads

POINT = os.environ.get("CRASH_POINT", "finish")


def die_once(task_id: str) -> None:
    marker = os.environ["CRASH_MARKER"]
    if task_id == os.environ["CRASH_AFTER_TASK"] and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # no ack, nothing more sent: only the outbox knows what this completion took


_finish, _sent = scheduler.DagScheduler.finish, scheduler.DagScheduler.sent


def finish(self, result, send=None):
    completion = _finish(self, result, send)
    if POINT == "finish" and completion.sends:
        die_once(result.task_id)
    return completion


def sent(self, task_id):
    if POINT == "sent":
        die_once(task_id)
    return _sent(self, task_id)


scheduler.DagScheduler.finish, scheduler.DagScheduler.sent = finish, sent
