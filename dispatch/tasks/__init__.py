"""Celery task definitions only: thin shells over the pure logic in ``dispatch``."""
from .agents import agent_task, collect_task  # noqa: F401
from .baseline import baseline_noop  # noqa: F401
from .phases import PHASE_TASKS, phase_signature  # noqa: F401
