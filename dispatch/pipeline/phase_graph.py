"""The phases as a graph: which of a run's selected phases may run at the same time, and how two phases
that ran side by side become one state again.

Each phase declares the ``PhaseState`` fields it reads and writes (``phase_io``).
Every phase task reads the run's state as it was when its message was sent, so
a phase waits for an earlier selected phase only when it reads or writes what
that phase writes.  Phase 0 reading the tasks that phase 1 may rewrite is no
reason to wait: beside phase 1 it still sees the breakdown the sequence would
have shown it.  Phase 4 fans the agents out and closes the run: it runs alone,
after everything else.  ``stages`` turns that into the steps the client sends
(``[[0, 1], [2], [3], [4]]`` for a full run); ``[phases] parallel = false``
gives one phase per step, the sequence.

Two phases of one stage save the same run: ``merge_branch`` folds a phase's
declared writes and its ``PhaseResult`` into whatever the store holds by then
(the store calls it inside its atomic update), and marks in ``ran_from`` which
state version the phase started from, so a redelivered phase does not run twice.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from dispatch.config import DispatchConfig
from dispatch.models import ExecutionPhase, PhaseState
from dispatch.pipeline.status import ACTIVE, STOPPED
from dispatch.quorum import reads_context

EXECUTION = ExecutionPhase.PARALLEL_EXECUTION.number
# what every phase reads besides its own fields: the request as the phases see it
REQUEST = frozenset({"user_prompt", "workspace_path", "rag_queries", "run_config", "input_extras", "config"})


@dataclass(frozen=True)
class PhaseIO:
    reads: frozenset[str]
    writes: frozenset[str]


def phase_io(number: int, config: DispatchConfig) -> PhaseIO:
    """The ``PhaseState`` fields phase ``number`` reads and writes (besides its result and the status)."""
    if number == 0:
        return PhaseIO(REQUEST | {"tasks_data"}, frozenset({"global_context"}))
    if number == 1:  # a validator that reads the gathered context (``reads_context``) makes phase 1 wait for 0
        context = {"global_context"} if reads_context(config) else set()
        return PhaseIO(REQUEST | {"tasks_data"} | context, frozenset({"quorum_result", "tasks_data", "plan"}))
    if number == 2:
        return PhaseIO(REQUEST | {"tasks_data"}, frozenset({"plan"}))
    if number == 3:
        return PhaseIO(REQUEST | {"tasks_data", "global_context", "plan"}, frozenset({"task_contexts"}))
    return PhaseIO(REQUEST | {"tasks_data", "plan", "task_contexts", "workspace"},
                   frozenset({"task_results", "integration"}))


def waits_for(later: int, earlier: int, config: DispatchConfig) -> bool:
    """Must ``later`` start after ``earlier`` ends (both selected, ``earlier`` first in the sequence)?"""
    if EXECUTION in (later, earlier):
        return True
    first, second = phase_io(earlier, config), phase_io(later, config)
    return bool(first.writes & (second.reads | second.writes))


def stages(selected: list[int], config: DispatchConfig) -> list[list[int]]:
    """The selected phases as steps: every phase of a step runs at once, a step starts when the one before
    has ended.  A phase goes to the step after the last one holding a phase it waits for."""
    ordered = sorted(set(selected))
    if not config.phases.parallel:
        return [[n] for n in ordered]
    level: dict[int, int] = {}
    for n in ordered:
        level[n] = max((level[m] + 1 for m in level if waits_for(n, m, config)), default=0)
    steps: list[list[int]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for n in ordered:
        steps[level[n]].append(n)
    return steps


def stage_of(number: int, state: PhaseState) -> list[int]:
    """The phases that run beside ``number`` in ``state``'s run (``[number]`` alone when none does)."""
    for step in stages(state.selected_phases, state.config):
        if number in step:
            return step
    return [number]


def ran_beside_peers(number: int, state: PhaseState, base_version: int) -> bool:
    """A phase of a parallel stage whose peer saved first: the store is past its message's version, but the
    phase itself has not run from that version yet (it runs, and merges its writes on save)."""
    return len(stage_of(number, state)) > 1 and state.ran_from.get(number) != base_version


def as_branch_saw_it(state: PhaseState, number: int, base_version: int) -> None:
    """A peer's quorum FAIL came in first: this phase still runs, as it would have before phase 1 in the
    sequence (the merge keeps the failure).  A cancel is not undone: the phase passes through."""
    if state.version != base_version and state.status == "failed" and len(stage_of(number, state)) > 1:
        state.status = "running"


def merge_branch(current: Optional[PhaseState], mine: PhaseState, number: int, base_version: int) -> PhaseState:
    """What to store after phase ``number`` ran on the state of ``base_version`` and left ``mine``:
    ``mine`` itself when nobody saved since, else ``current`` with ``mine``'s declared writes and result."""
    if current is None or current.version == base_version:
        merged = mine.model_copy()
    else:
        merged = current.model_copy()
        for name in phase_io(number, mine.config).writes:
            setattr(merged, name, getattr(mine, name))
        result = mine.result_for(ExecutionPhase.of(number))
        if result is not None:
            merged.record(result)
        merged.status = next((s for s in ("cancelled", "failed") if s in (current.status, mine.status)),
                             mine.status)
    merged.ran_from = {**merged.ran_from, number: base_version}
    settle_status(merged, number, base_version)
    return merged


def settle_status(state: PhaseState, number: int, base_version: int) -> None:
    """A stage ends the run only when all its phases have run: the last selected phase finishing first
    (phase 1 before phase 0) leaves the run running until its peer has saved too."""
    if state.status not in ACTIVE | {"succeeded"} or state.status in STOPPED:
        return
    stage = stage_of(number, state)
    if len(stage) == 1:
        return  # the sequence's rule (``status.after_phase``) already holds
    done = all(state.ran_from.get(n) == base_version for n in stage)
    last = max(stage) >= max(state.selected_phases)
    state.status = "succeeded" if done and last else "running"
