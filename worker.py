"""The Celery app for ``celery -A worker worker``.

Settings come from the environment (``DISPATCH_BROKER_URL``,
``DISPATCH_RESULT_BACKEND``, ``DISPATCH_STATE_URL``, ...).  A worker consumes
both queues unless told otherwise; agent-only workers elsewhere can run
``celery -A worker worker -Q dispatch.agents --pool threads -c 16``.
"""
from dispatch.celery_app import create_app
from dispatch.config import Settings

app = create_app(Settings.from_env())
# The process's current app: tools that resolve results through Celery's default app (Flower's
# /api/task/result, `celery result`) would otherwise see no result backend.
app.set_current()
