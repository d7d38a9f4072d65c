"""The Celery app for ``celery -A worker worker`` in a checkout (the same as ``-A dispatch.runtime.worker``)."""
from dispatch.runtime.worker import app  # noqa: F401
