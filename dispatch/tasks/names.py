"""Queue and task names: what a worker consumes and what the client and Flower see.  Imports nothing.

Queues are named after the deployment's key prefix (``DISPATCH_KEY_PREFIX``), so
two deployments on one broker never consume each other's messages; with the
default prefix they are ``dispatch.phases`` and ``dispatch.agents``.
"""

DEFAULT_PREFIX = "dispatch"


def phase_queue(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}.phases"


def agent_queue(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}.agents"


PHASE_QUEUE = phase_queue()
AGENT_QUEUE = agent_queue()

AGENT_TASK = "dispatch.agent"
COLLECT_TASK = "dispatch.collect"
PHASE_TASK_NAMES = (
    "dispatch.phase_0_context_gathering",
    "dispatch.phase_1_quorum_validation",
    "dispatch.phase_2_task_planning",
    "dispatch.phase_3_context_filtering",
    "dispatch.phase_4_parallel_execution",
)


def phase_task_name(number: int) -> str:
    return PHASE_TASK_NAMES[number]


def agent_shadow(task_id: str) -> str:
    """The name Flower, events and worker logs show for an agent task: which task it runs."""
    return f"{AGENT_TASK}:{task_id}"


def celery_id(run_id: str, unique: str) -> str:
    """Celery task ids start with the run id, so Flower's search finds every task of a run."""
    return f"{run_id}-{unique}"
