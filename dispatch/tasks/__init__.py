"""Celery task definitions only: thin shells over the pipeline and the store."""
from dispatch.tasks.agents import agent_task, collect_task  # noqa: F401
from dispatch.tasks.phases import PHASE_TASKS, phase_signature  # noqa: F401

