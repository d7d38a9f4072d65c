"""One agent task in a git checkout of its own: checkout at its start commit, run, commit what it changed.

The agent task calls ``run_isolated`` when its payload carries a workspace (the
run's repository is a git work tree and the agent's kind may edit files).  A
start commit that cannot be made (the dependencies' changes conflict) or a
failing ``setup`` fails the task before the agent runs; whatever the agent
changed, even when it failed, is committed on a ref of the run, so no work is
lost.  After phase 4, ``rebuild_integration`` makes the integration branch again
without the changes a person dropped (the interactive phase-4 checkpoint); the
drops stay in the state (``dropped_changes``), and ``integration_parts`` leaves
them out of every later integration of the run (phase 4 retried or resumed).
The git side is ``dispatch.workspace``; this only sequences it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Collection, Mapping, Optional

from dispatch.agents import AgentInvocation, AgentOutcome, make_agent, resolve_agent, run_agent, task_timeout
from dispatch.models import (AgentPayload, ExecutionPhase, Integration, IntegrationConflict, PhaseState, TaskChanges,
                             TaskResult, TaskSpec)
from dispatch.pipeline.execution import LEFT_OUT, integration_order, integration_summary, left_out_error
from dispatch.workspace import (SetupFailed, StartConflict, WorkspaceError, commit_checkout, integrate,
                                prepare_checkout, scope_fault)

# the agent, run in ``workdir`` with a note of which files each dependency changed
Invoke = Callable[[str, dict[str, list[str]]], AgentOutcome]


def run_isolated(payload: AgentPayload, dependency_commits: dict[str, str],
                 invoke: Invoke) -> tuple[AgentOutcome, Optional[TaskChanges]]:
    assert payload.workspace is not None and payload.workspace_options is not None
    options = payload.workspace_options
    deps = [(d, dependency_commits[d]) for d in payload.dependency_order if d in dependency_commits]
    try:
        checkout = prepare_checkout(payload.workspace, payload.task.task_id, deps, options)
    except StartConflict as exc:
        return AgentOutcome.fail(f"not started: {exc}"), None
    except SetupFailed as exc:
        return AgentOutcome.fail(f"workspace setup failed: {exc}"), None
    except WorkspaceError as exc:
        return AgentOutcome.fail(f"no checkout for the task: {exc}", transient=True), None
    outcome = invoke(str(checkout.workdir), checkout.dependency_changes)
    try:
        changes = commit_checkout(checkout, payload.task, options, succeeded=outcome.success)
    except WorkspaceError as exc:
        return AgentOutcome.fail(f"its changes could not be committed: {exc}", outcome.output), None
    fault = scope_fault(changes, options)
    if fault and outcome.success:
        outcome = AgentOutcome.fail(fault, outcome.output)
    return outcome, changes


def conflict_resolver(state: PhaseState) -> Optional[Callable[[Path, IntegrationConflict], bool]]:
    """``[workspace] resolver = "<agent>"``: that agent gets each integration conflict in a checkout holding the
    conflicted merge, with a prompt naming the tasks and files; the engine takes its result only when no
    conflict markers remain."""
    name = state.config.workspace.resolver
    if not name:
        return None
    agent = make_agent(name, state.config)
    component = resolve_agent(name, state.config)

    def resolve(path: Path, conflict: IntegrationConflict) -> bool:
        spec = TaskSpec(task_id=f"resolve-{conflict.task_id}", agent=name,
                        description=f"Resolve the merge conflict of task '{conflict.task_id}'")
        prompt = (f"The changes of task '{conflict.task_id}' conflict with those of "
                  f"{', '.join(conflict.with_) or 'the base'} in: {', '.join(conflict.files)}.\n"
                  f"This checkout holds the conflicted merge. Edit those files so that both changes survive, "
                  f"remove every conflict marker (<<<<<<<, =======, >>>>>>>), and stop.")
        invocation = AgentInvocation(task=spec, context=None, dependency_outputs={}, user_prompt=state.user_prompt,
                                     workspace_path=str(path), run_id=state.run_id, attempt=1,
                                     timeout_s=task_timeout(component, state.run_config.timeout_seconds),
                                     prompt=prompt)
        return run_agent(agent, invocation).success

    return resolve


def dependency_note(changed: dict[str, list[str]]) -> str:
    """The prompt's section saying which files each dependency changed (empty when none did)."""
    lines = [f"- {dep}: {', '.join(files)}" for dep, files in changed.items() if files]
    return ("\n\n## Files your dependencies changed (already in your checkout)\n\n" + "\n".join(lines) + "\n") \
        if lines else ""


# ------------------------------------------------------------- after phase 4: dropping changes
Changes = list[tuple[str, str]]  # (task id, change commit), in integration order


def integration_parts(state: PhaseState, finished: Mapping[str, TaskResult]) -> tuple[Changes, Changes]:
    """The changes an integration of ``finished`` merges, and those it leaves out because a person dropped
    them (``state.dropped_changes``): the same split for phase 4's closer and for a rebuild."""
    candidates = integration_order(state, dict(finished))
    dropped = set(state.dropped_changes)
    return [c for c in candidates if c[0] not in dropped], [c for c in candidates if c[0] in dropped]


def integration_candidates(state: PhaseState) -> Changes:
    """(task id, change commit) of every succeeded task with a change, in integration order: what the
    integration branch may hold."""
    if state.workspace is None or state.workspace.isolation != "git":
        return []
    return integration_order(state, {r.task_id: r for r in state.task_results})


def rebuild_integration(state: PhaseState, dropped: Collection[str], *,
                        cache_root: Optional[Path] = None) -> Integration:
    """Make the integration branch again from the base without the changes of ``dropped``.

    Their own refs stay (``dispatch diff`` still shows them); a task built on a dropped one is left out
    too, as a conflict naming it.  The drops are the run's from now on (``state.dropped_changes``: a
    retried phase 4 leaves them out as well).  ``state.integration`` and phase 4's result follow the new
    branch: when every task succeeded, the phase succeeds exactly when nothing conflicts any more.  A git
    failure raises ``WorkspaceError`` and changes nothing.
    """
    assert state.workspace is not None
    candidates = integration_candidates(state)
    integration = integrate(state.workspace, [(t, c) for t, c in candidates if t not in dropped],
                            resolver=conflict_resolver(state), excluded=[(t, c) for t, c in candidates if t in dropped],
                            cache_root=cache_root, timeout=state.config.workspace.git_timeout_s)
    state.integration = integration
    state.dropped_changes = [t for t, _ in candidates if t in dropped]
    result = state.result_for(ExecutionPhase.PARALLEL_EXECUTION)
    if result is not None:
        result.output_data["integration"] = integration_summary(integration)
        result.output_data.pop("integration_error", None)
        tasks_ok = all(r.success for r in state.task_results) and state.status != "cancelled"
        if tasks_ok and (result.error is None or result.error.startswith(LEFT_OUT)):
            result.success = not integration.conflicts
            result.error = left_out_error(integration)
    return integration
