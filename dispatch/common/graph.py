"""What is structurally wrong with a dependency graph, found once for every caller.

Phase 2 refuses a breakdown at its first fault; the quorum lists every fault as
a deficiency so a planner can fix them together.  Both ask this module, so a
fault reads the same wherever it is reported.  It works on plain
``(task_id, dependencies)`` pairs, so it needs no model and no phase.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Optional, Sequence

FaultKind = Literal["duplicate_id", "self_dependency", "unknown_dependency", "cycle"]
Node = tuple[str, Sequence[str]]


@dataclass(frozen=True)
class GraphFault:
    """One fault: ``path`` names where it is (``tasks[2].dependencies``; ``tasks`` for a cycle,
    which is nowhere in particular), ``members`` the task ids involved (a cycle's in order)."""

    kind: FaultKind
    path: Optional[str]
    detail: str
    members: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}" if self.path else self.detail


def graph_faults(nodes: Iterable[Node]) -> list[GraphFault]:
    """Every fault, in a stable order: duplicate ids, then unknown and self dependencies
    task by task, then one fault per cycle."""
    # one shared empty tuple for every task without dependencies: 100k tasks hold no 100k empty lists
    nodes = [(task_id, list(deps) if deps else ()) for task_id, deps in nodes]
    faults: list[GraphFault] = []
    first: dict[str, int] = {}
    for i, (task_id, _) in enumerate(nodes):
        if task_id in first:
            faults.append(GraphFault("duplicate_id", f"tasks[{i}].task_id",
                                     f"duplicate id '{task_id}' (first at tasks[{first[task_id]}])", (task_id,)))
        else:
            first[task_id] = i
    for i, (task_id, deps) in enumerate(nodes):
        for dep in dict.fromkeys(deps):
            if dep == task_id:
                faults.append(GraphFault("self_dependency", f"tasks[{i}].dependencies",
                                         f"task '{dep}' depends on itself", (dep,)))
            elif dep not in first:
                faults.append(GraphFault("unknown_dependency", f"tasks[{i}].dependencies",
                                         f"unknown task '{dep}'", (dep,)))
    for cycle in find_cycles(nodes):
        faults.append(GraphFault("cycle", "tasks", "dependency cycle (a -> b: a depends on b): "
                                 + " -> ".join(cycle + [cycle[0]]), tuple(cycle)))
    return faults


def find_cycles(nodes: Iterable[Node]) -> list[list[str]]:
    """Cycles of length >= 2, each as its members in dependency order (a depends on the next).

    Self-dependencies are faults of their own, not cycles.  Iterative DFS, so a
    long chain cannot hit the recursion limit; each cycle is reported once, by
    the back edge that closes it, the first one found first.
    """
    deps: dict[str, list[str]] = {}
    for task_id, task_deps in nodes:
        if task_deps:  # a task without dependencies closes no cycle: it is a leaf of the search
            deps.setdefault(task_id, []).extend(d for d in task_deps if d != task_id)
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
