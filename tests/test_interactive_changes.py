"""The phase-4 checkpoint of a run with git workspaces: each task's change shown, and ``[e]dit`` drops
changes from the integration branch, which is rebuilt from the base without them.

The rebuild and the edit's validation are tested directly on real repositories (fast); the whole
flow through the real CLI in a pseudo-terminal, with a scripted ``$EDITOR``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dispatch.cli.interactive.editor import EditRejected, validate_integration
from dispatch.cli.interactive.view import checkpoint_lines
from dispatch.models import ExecutionPhase, PhaseResult, PhaseState, TaskResult
from dispatch.pipeline.workspace_run import rebuild_integration
from dispatch.testing import free_port
from dispatch.workspace import WorkspaceError, WorkspaceOptions, integrate, snapshot_base

from interactive_pty import PtyCli, answer, finish
from test_workspace import fingerprint, git, make_repo, run_task, show, task, write

CALC = "def add(a, b):\n    return a + b\n"


def run_state(repo: Path, cache_root: Path, run_id: str, edits: dict, deps: dict = {}) -> PhaseState:
    """A run as phase 4 leaves it: each task's change committed, the integration made, the result recorded."""
    info = snapshot_base(repo, WorkspaceOptions(), run_id)
    specs, results, commits = [], [], {}
    for task_id, (name, text) in edits.items():
        spec = task(task_id, deps=deps.get(task_id, ()))
        _, changes = run_task(info, spec, write(name, text), WorkspaceOptions(), cache_root,
                              deps=[(d, commits[d]) for d in spec.dependencies])
        commits[task_id] = changes.commit
        specs.append(spec)
        results.append(TaskResult(task_id=task_id, agent="shell", success=True, changes=changes))
    state = PhaseState(run_id=run_id, tasks_data=specs, task_results=results, workspace=info, status="succeeded")
    state.integration = integrate(info, list(commits.items()), cache_root=cache_root)
    result = PhaseResult(phase=ExecutionPhase.PARALLEL_EXECUTION, phase_name="Parallel Execution", success=True)
    if state.integration.conflicts:  # as phase 4's closer records it
        result.success, result.error = False, "integration: left out of ..."
    state.record(result)
    return state


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "user", {"calc.py": CALC})


def test_dropping_a_change_rebuilds_the_branch_without_it_and_keeps_its_ref(repo: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    state = run_state(repo, cache, "drop", {"a": ("a.txt", "A\n"), "b": ("b.txt", "B\n"), "c": ("c.txt", "C\n")},
                      deps={"c": ["a"]})
    assert state.integration.merged == ["a", "b", "c"]
    shown = "\n".join(checkpoint_lines("after", 4, state))
    assert "+1 -0 a.txt" in shown and "merged a, b, c" in shown

    # c builds on a: dropping only a leaves c out as well, named with the reason
    integration = rebuild_integration(state, ["a"], cache_root=cache)
    assert integration.merged == ["b"] and integration.dropped == ["a"]
    assert [(c.task_id, c.with_) for c in integration.conflicts] == [("c", ["a"])]
    result = state.result_for(ExecutionPhase.PARALLEL_EXECUTION)
    assert result.success is False and "c (" in result.error and state.integration is integration

    integration = rebuild_integration(state, ["a", "c"], cache_root=cache)
    assert integration.merged == ["b"] and integration.dropped == ["a", "c"] and integration.conflicts == []
    assert result.success is True and result.error is None
    assert result.output_data["integration"] == {"ref": integration.ref, "merged": 1, "conflicts": 0, "dropped": 2}
    names = git(repo, "ls-tree", "--name-only", integration.ref).split()
    assert "b.txt" in names and "a.txt" not in names and "c.txt" not in names
    a_commit = state.task_results[0].changes.commit
    assert git(repo, "rev-parse", "refs/dispatch/drop/tasks/a") == a_commit  # the dropped change is kept
    shown = "\n".join(checkpoint_lines("after", 4, state))
    assert "dropped here: a, c" in shown and "merged b" in shown

    back = rebuild_integration(state, [], cache_root=cache)  # put back: all three again
    assert back.merged == ["a", "b", "c"] and back.dropped == [] and show(repo, back.ref, "c.txt") == "C\n"


def test_dropping_one_side_of_a_conflict_lets_the_other_merge_and_the_phase_succeed(repo: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    state = run_state(repo, cache, "pick", {"mul": ("calc.py", CALC + "\ndef mul(): pass\n"),
                                            "sub": ("calc.py", CALC + "\ndef sub(): pass\n")})
    assert state.integration.merged == ["mul"] and state.integration.conflicts[0].task_id == "sub"
    assert "✗ sub left out: calc.py" in "\n".join(checkpoint_lines("after", 4, state))
    integration = rebuild_integration(state, ["mul"], cache_root=cache)
    assert integration.merged == ["sub"] and not integration.conflicts
    assert "def sub" in show(repo, integration.ref, "calc.py")
    assert state.result_for(ExecutionPhase.PARALLEL_EXECUTION).success is True


def test_a_failed_task_keeps_the_phase_failed_whatever_is_dropped(repo: Path, tmp_path: Path):
    state = run_state(repo, tmp_path / "cache", "fail", {"a": ("a.txt", "A\n")})
    state.task_results.append(TaskResult(task_id="x", agent="shell", success=False, error="exit 1"))
    result = state.result_for(ExecutionPhase.PARALLEL_EXECUTION)
    result.success, result.error = False, "1 failed, 0 skipped"
    rebuild_integration(state, ["a"], cache_root=tmp_path / "cache")
    assert result.success is False and result.error == "1 failed, 0 skipped"


def test_a_git_failure_leaves_the_integration_and_the_result_as_they_were(repo: Path, tmp_path: Path):
    state = run_state(repo, tmp_path / "cache", "down", {"a": ("a.txt", "A\n"), "b": ("b.txt", "B\n")})
    before = state.model_dump_json()
    state.workspace.remote = f"git://127.0.0.1:{free_port()}/gone.git"  # the remote went away since
    with pytest.raises(WorkspaceError):
        rebuild_integration(state, ["a"], cache_root=tmp_path / "cache")
    state.workspace.remote = None
    assert state.model_dump_json() == before


def test_the_edit_is_validated_against_the_changes_and_the_graph():
    tasks = [task("a"), task("b"), task("c", deps=["a"]), task("d", deps=["c"])]
    candidates = ["a", "b", "c", "d"]
    assert validate_integration(["d", "c", "a"], candidates, tasks) == ["a", "c", "d"]  # in integration order
    assert validate_integration([], candidates, tasks) == []
    with pytest.raises(EditRejected, match="list of task ids"):
        validate_integration({"a": True}, candidates, tasks)
    with pytest.raises(EditRejected, match=r"not a succeeded task with a change: 'ghost'.*a, b, c, d"):
        validate_integration(["a", "ghost"], candidates, tasks)
    with pytest.raises(EditRejected, match=r"^'d' builds on 'a', 'c' .*drop 'd' too, or keep 'a', 'c'$"):
        validate_integration(["b", "d"], candidates, tasks)
    with pytest.raises(EditRejected, match=r"^'d' builds on 'a' \(.*that change\): drop 'd' too, or keep 'a'$"):
        validate_integration(["b", "d"], ["a", "b", "d"], tasks)  # through c, which changed nothing


# ------------------------------------------------------------------------ the real CLI in a pty
WRITE = "import sys; open(sys.argv[1], 'w').write(sys.argv[2] + '\\n')"


def test_phase_4_checkpoint_shows_changes_and_edit_drops_them(tmp_path: Path):
    pty_cli = PtyCli(tmp_path)
    repo = make_repo(tmp_path / "repo", {"calc.py": CALC})
    before = fingerprint(repo)
    config = tmp_path / "agents.json"
    config.write_text(json.dumps({"agents": {"write": {"kind": "shell", "command": [
        "python3", "-c", WRITE, "{input.file}", "{input.text}"]}}}))
    tasks = pty_cli.write("tasks.json", {"workspace_path": str(repo), "tasks": [
        {"task_id": "a", "agent": "write", "description": "write a.txt", "input_data": {"file": "a.txt", "text": "A"}},
        {"task_id": "b", "agent": "write", "description": "write b.txt", "input_data": {"file": "b.txt", "text": "B"}},
        {"task_id": "c", "agent": "write", "description": "write c.txt", "input_data": {"file": "c.txt", "text": "C"},
         "dependencies": ["a"]}]})
    pty_cli.edits('["b", "c"]', '["b"]')  # first keeps c, which builds on the dropped a: refused
    child = pty_cli.spawn(f"-i --config {config} -f {tasks}")
    child.expect(r"session file: (\S+)")
    session_file = Path(child.match.group(1))
    answer(child, "Checkpoint after phase 2", "a")
    answer(child, "Checkpoint after phase 3", "a")
    shown = answer(child, "Checkpoint after phase 4", "e")
    assert "[e]dit" in shown and "+1 -0 a.txt" in shown and "+1 -0 c.txt" in shown
    assert "merged a, b, c" in shown
    child.expect_exact("Edit rejected: 'c' builds on 'a'")
    child.expect_exact("Rebuilding dispatch/")
    shown = answer(child, "Checkpoint after phase 4", "a")
    assert "merged b" in shown and "dropped here: a, c" in shown
    code, _ = finish(child)
    assert code == 0, pty_cli.transcript.getvalue()[-3000:]

    calls = pty_cli.editor_calls()
    assert len(calls) == 2 and "+1 -0 a.txt" in calls[0] and "(builds on a)" in calls[0]
    assert "// ERROR" in calls[1] and "drop 'c' too" in calls[1]
    out = pty_cli.result()
    run_id = out["run_id"]
    integration = out["integration"]
    assert integration["merged"] == ["b"] and integration["dropped"] == ["a", "c"] and integration["conflicts"] == []
    names = git(repo, "ls-tree", "--name-only", f"dispatch/{run_id}").split()
    assert "b.txt" in names and "a.txt" not in names and "c.txt" not in names
    results = {r["task_id"]: r for r in out["results"]}
    for dropped in ("a", "c"):  # the dropped changes are kept on their own refs
        ref = f"refs/dispatch/{run_id}/tasks/{dropped}"
        assert git(repo, "rev-parse", ref) == results[dropped]["changes"]["commit"]
    assert pty_cli.stored_run(run_id)["integration"]["dropped"] == ["a", "c"]
    session = json.loads(session_file.read_text())
    [edit] = [d for d in session["history"] if d["action"] == "edit"]
    assert edit["target"] == "integration" and edit["value"] == ["b"] and edit["checkpoint"] == "after-4"
    after = fingerprint(repo)  # the user's tree, index and HEAD untouched; only the run's branch is new
    branch = f"refs/heads/dispatch/{run_id} {integration['commit']}\n"
    assert after.pop("refs").replace(branch, "") == before.pop("refs")
    assert after == before
