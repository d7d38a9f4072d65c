"""The dispatch worker app plus the bare-Celery baseline tasks: what bench/ starts its workers with."""
from bench import baseline_tasks  # noqa: F401 - registers the baselines with every app
from dispatch.runtime.worker import app  # noqa: F401 - the app Celery loads
