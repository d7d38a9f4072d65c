"""Structural faults of a breakdown as quorum deficiencies, all of them at once.

The quorum wants every fault (the planner fixes them together), and the
planner's regenerated breakdown must pass the same checks before it replaces
the old one.  Finding them is ``common.graph``'s job; this only feeds it tasks.
"""
from __future__ import annotations

from typing import Sequence

import dispatch.common.graph as graph
from dispatch.models import TaskSpec


def graph_faults(tasks: Sequence[TaskSpec]) -> list[str]:
    """Duplicate ids, unknown and self dependencies, and one message per cycle found."""
    return [str(fault) for fault in graph.graph_faults((t.task_id, t.dependencies) for t in tasks)]
