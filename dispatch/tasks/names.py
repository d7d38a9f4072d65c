"""Queue and task names: what a worker consumes and what the client and Flower see.  Imports nothing."""

PHASE_QUEUE = "dispatch.phases"
AGENT_QUEUE = "dispatch.agents"

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
