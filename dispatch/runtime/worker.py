"""The Celery app built from the environment: ``celery -A dispatch.runtime.worker worker`` from anywhere.

Settings come from ``DISPATCH_*`` (``DISPATCH_BROKER_URL``, ``DISPATCH_RESULT_BACKEND``,
``DISPATCH_STATE_URL``, ...).  A worker consumes both queues unless told otherwise;
agent-only workers elsewhere can run ``... worker -Q dispatch.agents --pool threads -c 16``.
"""
from dispatch.config import Settings
from dispatch.runtime.app import create_app

from dispatch.runtime.memory import install as release_memory_after_whole_run_tasks

app = create_app(Settings.from_env())
release_memory_after_whole_run_tasks()  # a worker's RSS does not keep the peak of the largest run it closed
# The process's current app: tools that resolve results through Celery's default app (Flower's
# /api/task/result, `celery result`) would otherwise see no result backend.
app.set_current()
