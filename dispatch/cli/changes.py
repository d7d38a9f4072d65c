"""``dispatch apply RUN_ID`` and ``dispatch diff RUN_ID [TASK_ID]``: a run's changes into the user's branch,
or as a patch.  The repository is the one the run recorded at submission, wherever the command is typed."""
from __future__ import annotations

import sys
from typing import Any, Optional

import click

from dispatch.errors import UsageError


def run_workspace(run_id: str) -> Any:
    from dispatch.config import Settings
    from dispatch.store.deployment import make_store

    store = make_store(Settings.from_env())
    state = store.load(run_id)
    if state is None:
        raise UsageError(f"no run '{run_id}' in {store.describe()} (see 'dispatch runs')")
    if state.workspace is None or state.workspace.isolation != "git" or not state.workspace.repo:
        raise UsageError(f"run {run_id} ran in a shared directory, not in git checkouts: it has no changes "
                         f"to apply or show (git isolation needs workspace_path inside a git work tree)")
    return state


@click.command("apply", short_help="Merge a run's integration branch into your current branch.")
@click.argument("run_id")
def apply(run_id: str) -> int:
    """Merge the run's integration branch (dispatch/RUN_ID) into the current branch of the repository the
    run was submitted from; refused on a dirty tree or a merge that would conflict."""
    from dispatch.cli.log import Log
    from dispatch.workspace import apply_integration

    state = run_workspace(run_id)
    applied = apply_integration(state.workspace.repo, run_id)
    log = Log()
    if not applied.changed:
        log.ok(f"{applied.branch} already has everything of {applied.integration}")
        return 0
    how = "fast-forward" if applied.fast_forward else "merge commit"
    log.ok(f"{applied.integration} merged into {applied.branch} ({how}, {applied.before[:12]} -> "
           f"{applied.after[:12]}): tasks {', '.join(applied.tasks)}")
    for f in applied.files:
        log.line(f"  +{f.added} -{f.deleted} {f.path}")
    return 0


@click.command("diff", short_help="Print the patch of a run's task, or of its whole integration.")
@click.argument("run_id")
@click.argument("task_id", required=False)
def diff(run_id: str, task_id: Optional[str]) -> int:
    """The unified diff of TASK_ID's change (its own commit), or with no TASK_ID of the integration branch
    against the run's base, on stdout."""
    from dispatch.workspace import task_patch

    state = run_workspace(run_id)
    if task_id is not None and task_id not in {t.task_id for t in state.tasks_data}:
        raise UsageError(f"run {run_id} has no task '{task_id}'")
    sys.stdout.write(task_patch(state.workspace.repo, run_id, task_id))
    return 0
