"""Git workspaces for phase 4: a base commit per run, a checkout per task, one integration branch.

What the rest of dispatch uses (the pipeline and the agent tasks call these; nothing here knows
Celery):

- at submission: ``snapshot_base`` -> ``WorkspaceInfo`` (the base on ``refs/dispatch/<run_id>/base``);
- per task, on the worker: ``prepare_checkout`` -> ``Checkout`` (``StartConflict`` when the
  dependencies' changes collide), then ``commit_checkout`` -> ``TaskChanges``;
- when phase 4 ends: ``integrate`` -> ``Integration`` (``refs/heads/dispatch/<run_id>``);
- on request: ``apply_integration`` and ``task_patch`` (``dispatch apply`` / ``dispatch diff``);
- in planning: ``overlapping_scopes`` and ``serialize_overlaps`` for declared ``writes``.
"""
from dispatch.workspace.apply import Applied, apply_integration, task_patch
from dispatch.workspace.cache import default_cache_root
from dispatch.workspace.changes import commit_checkout, scope_fault
from dispatch.workspace.checkout import Checkout, prepare_checkout, remove_checkout
from dispatch.workspace.errors import GitError, SetupFailed, StartConflict, WorkspaceError, WorkspaceUsageError
from dispatch.workspace.integrate import Resolver, fetch_run_refs, integrate
from dispatch.workspace.options import TaskWorkspace, WorkspaceOptions, for_task
from dispatch.common.scopes import ScopeOverlap, overlapping_scopes, patterns_overlap, serialize_overlaps
from dispatch.workspace.snapshot import find_work_tree, resolve_isolation, snapshot_base

__all__ = [
    "Applied", "Checkout", "GitError", "Resolver", "ScopeOverlap", "SetupFailed", "StartConflict", "TaskWorkspace",
    "WorkspaceError", "WorkspaceOptions", "WorkspaceUsageError", "apply_integration", "commit_checkout",
    "default_cache_root", "fetch_run_refs", "find_work_tree", "for_task", "integrate", "overlapping_scopes",
    "patterns_overlap", "prepare_checkout", "remove_checkout", "resolve_isolation", "scope_fault",
    "serialize_overlaps", "snapshot_base", "task_patch",
]
