"""Structural faults of a breakdown, all of them at once.

Phase 2 refuses a bad graph at its first fault; the quorum instead wants every
fault as a deficiency (the planner fixes them together), and the planner's
regenerated breakdown must pass the same checks before it replaces the old one.
"""
from __future__ import annotations

from typing import Sequence

from dispatch.models import TaskSpec


def graph_faults(tasks: Sequence[TaskSpec]) -> list[str]:
    """Duplicate ids, unknown and self dependencies, and one message per cycle found."""
    faults: list[str] = []
    first: dict[str, int] = {}
    for i, task in enumerate(tasks):
        if task.task_id in first:
            faults.append(f"tasks[{i}].task_id: duplicate task id '{task.task_id}' "
                          f"(first at tasks[{first[task.task_id]}])")
        else:
            first[task.task_id] = i
    for i, task in enumerate(tasks):
        for dep in dict.fromkeys(task.dependencies):
            if dep == task.task_id:
                faults.append(f"tasks[{i}].dependencies: task '{dep}' depends on itself")
            elif dep not in first:
                faults.append(f"tasks[{i}].dependencies: unknown task '{dep}'")
    for cycle in find_cycles(tasks):
        faults.append("dependency cycle: " + " -> ".join(cycle + [cycle[0]]))
    return faults


def find_cycles(tasks: Sequence[TaskSpec]) -> list[list[str]]:
    """Cycles of length >= 2 (self-dependencies are reported separately).

    Iterative DFS so a long chain cannot hit the recursion limit; each cycle is
    reported once, by the back edge that closes it.
    """
    deps: dict[str, list[str]] = {}
    for task in tasks:
        deps.setdefault(task.task_id, [])
        deps[task.task_id].extend(d for d in task.dependencies if d != task.task_id)
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    cycles: list[list[str]] = []
    for root in deps:
        if root in state:
            continue
        path: list[str] = [root]
        stack: list[tuple[str, int]] = [(root, 0)]
        state[root] = 1
        while stack:
            node, index = stack[-1]
            children = deps[node]
            if index == len(children):
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            stack[-1] = (node, index + 1)
            child = children[index]
            if child not in deps:
                continue
            if state.get(child) == 1:
                cycles.append(path[path.index(child):])
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append((child, 0))
    return cycles
