"""The state a run is submitted with: new from input, loaded from a state file, or resumed from the store.

Everything here is checked before anything is submitted, so a fault is exit 2
with its message, never a worker's traceback: phase selection and the inputs
it needs, the graph, and every task's agent whenever phase 2 or 4 will run.
The config the run is planned with travels in the state (``PhaseState.config``):
a loaded or resumed state keeps its own unless another is given.  Warnings are
returned, not printed: the CLI decides how a person sees them.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Optional

from dispatch.common.spend import total
from dispatch.config import DispatchConfig
from dispatch.errors import ConfigError, InputError, UsageError
from dispatch.models import (ALL_PHASES, DispatchInput, ExecutionPhase, PhaseConfig, PhaseResult, PhaseState, TaskSpec,
                             Usage, iso, utcnow)
from dispatch.pipeline import status
from dispatch.pipeline.plan import agent_configs, check_run
from dispatch.pipeline.selection import check_inputs_available, selected_phases, skip_reason
from dispatch.planning.graph import GraphError
from dispatch.workspace import for_task, overlapping_scopes, serialize_overlaps


@dataclass
class Prepared:
    state: PhaseState
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def new_run_id() -> str:
    return utcnow().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


def prepare_state(request: Optional[DispatchInput], cfg: PhaseConfig, config: Optional[DispatchConfig],
                  loaded: Optional[PhaseState], run_id: Optional[str] = None) -> Prepared:
    """The state a run starts from: the input, plus whatever a loaded state already holds.

    ``config`` None: a loaded state's own config (the one it was planned with),
    else the empty one.  A config given with a loaded state replaces its own.
    """
    phases = selected_phases(cfg)
    check_inputs_available(cfg, phases, loaded)
    if request is None and loaded is None:
        raise InputError("no input: pipe a task breakdown on stdin, or give --input-file or --load-phase-state")
    prepared = Prepared(loaded.model_copy(deep=True) if loaded else PhaseState(run_id=""))
    state = prepared.state
    state.run_id = run_id or new_run_id()
    if loaded is not None and state.run_id != loaded.run_id:
        state.workspace = state.integration = None  # a new run records its own base and refs
        state.dropped_changes = []  # and its own changes, which nobody has dropped yet
    status.prepared(state)
    state.task_results = []
    if request is not None:
        if loaded is not None and [t.task_id for t in loaded.tasks_data] != [t.task_id for t in request.tasks]:
            if loaded.plan or loaded.task_contexts:
                prepared.warnings.append("the loaded state was planned for other tasks; its plan and per-task "
                                         "context are dropped")
            state.plan, state.task_contexts = None, {}
            check_inputs_available(cfg, phases, state)
        known = set(DispatchInput.model_fields)
        state.user_prompt = request.user_prompt
        state.workspace_path = request.workspace_path
        state.rag_queries = request.rag_queries
        state.tasks_data = request.tasks
        state.run_config = request.config
        extras = request.model_dump(exclude={"tasks"})  # the tasks may be ``CompactTasks``: never dumped here
        state.input_extras = {k: v for k, v in extras.items() if k not in known}
    replaced = config is not None and loaded is not None
    if config is not None:
        state.config = config
    state.phase_config = cfg
    state.selected_phases = phases
    state.started_at = iso(utcnow())
    for number in ALL_PHASES:
        phase = ExecutionPhase.of(number)
        reason = skip_reason(cfg, number)
        if reason and not (loaded and loaded.has_completed(phase)):
            state.record(PhaseResult.skipped_result(phase, reason))
    preflight(state, replan=replaced)
    if ExecutionPhase.PARALLEL_EXECUTION.number in phases:
        check_workspace_overrides(state)
        if ExecutionPhase.TASK_PLANNING.number in phases:
            apply_write_scopes(state, prepared)
    return prepared


def check_workspace_overrides(state: PhaseState) -> None:
    """A task's own ``workspace`` key is checked now (exit 2 naming it), not when its agent starts."""
    for i, task in enumerate(state.tasks_data):
        for_task(state.config.workspace, task, f"tasks[{i}]")
    resolver = state.config.workspace.resolver
    if resolver:
        try:
            agent_configs([TaskSpec(task_id="resolver", agent=resolver, description="")], state.config)
        except ConfigError as exc:
            raise InputError(f"workspace.resolver: {exc}") from None


def apply_write_scopes(state: PhaseState, prepared: Prepared) -> None:
    """Tasks whose declared ``writes`` overlap with nothing ordering them, by ``[workspace]
    overlapping_writes``: warned about, ordered (the later after the earlier, so phase 2 plans it), or
    refused."""
    pairs = overlapping_scopes(state.tasks_data)
    if not pairs:
        return
    policy = state.config.workspace.overlapping_writes
    if policy == "error":
        raise InputError("; ".join(p.describe() for p in pairs) + " ([workspace] overlapping_writes = "
                         "\"error\"; declare a dependency between them, or use \"serialize\")")
    if policy == "serialize":
        state.tasks_data = serialize_overlaps(state.tasks_data, pairs)
        prepared.notes.extend(f"Ordered '{p.second}' after '{p.first}': both may write {', '.join(p.globs)}"
                              for p in pairs)
    else:
        prepared.warnings.extend(p.describe() + " (they may conflict; [workspace] overlapping_writes = "
                                 "\"serialize\" orders them)" for p in pairs)


def preflight(state: PhaseState, replan: bool = False) -> None:
    """Refuse unknown agents, bad agent options and graph faults before anything is submitted (exit 2).

    Whenever phase 2 or 4 will run, every task's agent is resolved with the
    state's config.  A plan whose config was replaced (``--config`` given with
    a loaded state) gets its agents resolved again.
    """
    phases = set(state.selected_phases)
    if ExecutionPhase.TASK_PLANNING.number in phases:
        try:
            check_run(state.tasks_data, state.config)
        except GraphError as exc:
            raise InputError(str(exc)) from None
    elif ExecutionPhase.PARALLEL_EXECUTION.number in phases:
        try:
            configs = agent_configs(state.tasks_data, state.config)
        except ConfigError as exc:
            raise InputError(str(exc)) from None
        if state.plan is not None and (replan or not state.plan.agent_configs):
            state.plan.agent_configs = configs


# ----------------------------------------------------------------------- resume
def pipeline_phases(state: PhaseState) -> list[int]:
    """The phases the run is made of: 2-4 always, 0 and 1 when it enabled or selected them."""
    cfg = state.phase_config
    return [n for n in ALL_PHASES
            if n >= 2 or n in state.selected_phases or (n == 0 and cfg.enable_context)
            or (n == 1 and cfg.enable_quorum)]


def remaining_phases(state: PhaseState, skip: list[int]) -> list[int]:
    """Every phase of the run after its last completed one, minus ``skip``.

    "After the last completed" rather than "not completed": a phase 0 that
    failed (non-critical, context turned off) is not re-run once 2 and 3 are
    done; a quorum FAIL re-runs the quorum and everything after it.
    """
    pipeline = pipeline_phases(state)
    completed = [n for n in pipeline if state.has_completed(ExecutionPhase.of(n))]
    last = max(completed, default=-1)
    return [n for n in pipeline if n > last and n not in skip]


def dropped_usage(stored: PhaseState) -> Optional[Usage]:
    """The spend of the results a resume drops (failed tasks, run again), on top of earlier drops."""
    spent = total([stored.earlier_usage, *(r.usage for r in stored.task_results if not r.success)])
    return spent if spent.calls or spent.total_tokens else None


def resume_state(stored: PhaseState, skip: list[int], config: Optional[DispatchConfig],
                 force: bool = False) -> Prepared:
    """The state to submit for ``dispatch resume``: same run id, saved phases kept, the rest to run."""
    run_id = stored.run_id
    if stored.status in status.ACTIVE and not force:
        raise UsageError(f"run {run_id} is {stored.status} (saved {stored.saved_at}): it may still be running on "
                         f"the workers. Cancel it first ('dispatch cancel {run_id}'), or resume with --force if "
                         f"its workers and client are gone")
    for number in skip:
        if number not in ALL_PHASES:
            raise UsageError(f"--skip-phases {number}: phases are numbered 0-{ALL_PHASES[-1]}")
    remaining = remaining_phases(stored, skip)
    if not remaining:
        done = [n for n in ALL_PHASES if stored.has_completed(ExecutionPhase.of(n))]
        raise UsageError(f"run {run_id} has no phase left to run (status {stored.status}; completed phases: "
                         f"{', '.join(map(str, done)) or 'none'})")
    keep_context = stored.has_completed(ExecutionPhase.CONTEXT_GATHERING)
    cfg = PhaseConfig(skip_phases=[n for n in ALL_PHASES if n not in remaining],
                      enable_context=0 in remaining or (stored.phase_config.enable_context and keep_context),
                      enable_quorum=1 in remaining or stored.phase_config.enable_quorum)
    prepared = prepare_state(None, cfg, config, stored, run_id=run_id)
    state = prepared.state
    # nothing saved is lost: results of phases not re-run stay as they were, and so does the start time
    for number in ALL_PHASES:
        previous = stored.result_for(ExecutionPhase.of(number))
        if number not in remaining and previous is not None:
            state.record(previous)
    if ExecutionPhase.PARALLEL_EXECUTION.number not in remaining:
        state.task_results = stored.task_results
    else:  # tasks that already succeeded keep their results and are not run (nor their side effects) again
        state.task_results = [r for r in stored.task_results if r.success]
        state.earlier_usage = dropped_usage(stored)  # what the dropped attempts spent still counts
        if state.task_results:
            prepared.notes.append(f"Keeping {len(state.task_results)} succeeded task result(s) from the earlier "
                                  f"attempt")
    state.started_at = stored.started_at or state.started_at
    return prepared
