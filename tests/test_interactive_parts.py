"""The pieces behind ``-i`` without a terminal: checkpoints, session files, the editor loop, summaries."""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from dispatch.cli.interactive.view import checkpoint_lines, table
from dispatch.config import DispatchConfig
from dispatch.cli.interactive.editor import EditRejected, Editor, editor_command, validate_context, validate_tasks
from dispatch.errors import StateFileError, UsageError
from dispatch.models import (ExecutionPhase, PhaseResult, PhaseState, QuorumResult, TaskPlan, TaskSpec,
                             ValidatorVote)
from dispatch.cli.interactive.session import Decision, Session, checkpoints_for

PY = sys.executable


@pytest.mark.parametrize("phases, keys", [
    ([2, 3, 4], ["after-2", "after-3", "after-4"]),
    ([0, 1, 2, 3, 4], ["after-0", "after-1", "after-2", "after-3", "after-4"]),
    ([4], ["before-4", "after-4"]),  # phase 3 did not run: execution still gets a look first
    ([2, 4], ["after-2", "before-4", "after-4"]),
    ([0, 1], ["after-0", "after-1"]),
])
def test_checkpoints_for_a_selection(phases: list[int], keys: list[str]) -> None:
    assert [c.key for c in checkpoints_for(phases)] == keys


def session(phases: list[int]) -> Session:
    return Session(run_id="r1", selected_phases=phases, state=PhaseState(run_id="r1"))


def test_pending_is_the_first_undecided_checkpoint() -> None:
    s = session([2, 3, 4])
    assert s.pending().key == "after-2"
    s.record(Decision(checkpoint="after-2", action="edit"))
    s.record(Decision(checkpoint="after-2", action="retry"))
    assert s.pending().key == "after-2"  # edits and retries do not decide a checkpoint
    s.record(Decision(checkpoint="after-2", action="approve"))
    s.record(Decision(checkpoint="after-3", action="skip"))
    assert s.pending().key == "after-4"
    s.record(Decision(checkpoint="after-4", action="batch-approve", auto=True))
    assert s.pending() is None and s.decided == {"after-2": "approve", "after-3": "skip", "after-4": "approve"}


def test_skipping_before_phase_4_also_passes_its_after_checkpoint() -> None:
    s = session([4])
    s.record(Decision(checkpoint="before-4", action="skip"))
    assert s.pending() is None


def test_session_round_trip(tmp_path: Path) -> None:
    s = session([2, 3, 4])
    s.state.tasks_data = [TaskSpec(task_id="a", agent="echo", description="d", extra_key=[1, 2])]
    s.record(Decision(checkpoint="after-2", action="edit", target="tasks_data", value=[{"task_id": "a"}]))
    path = tmp_path / "deep" / "s.json"
    s.save(path)
    back = Session.load(path)
    assert back.model_dump() == s.model_dump() and back.updated_at is not None
    assert back.state.tasks_data[0].model_extra == {"extra_key": [1, 2]}  # unknown task keys survive


def test_session_whose_state_is_another_run_is_refused(tmp_path: Path) -> None:
    s = session([2])
    s.state.run_id = "someone-else"
    s.save(tmp_path / "s.json")
    with pytest.raises(StateFileError, match="belongs to run 'someone-else'"):
        Session.load(tmp_path / "s.json")


# ------------------------------------------------------------------ the editor
def test_editor_command_is_split_like_a_shell() -> None:
    assert editor_command({"EDITOR": "code --wait"}) == ["code", "--wait"]
    assert editor_command({"VISUAL": "'/opt/my editor/ed' -n", "EDITOR": "nano"}) == ["/opt/my editor/ed", "-n"]
    assert editor_command({}) == ["vi"]
    with pytest.raises(UsageError, match="cannot parse the editor command"):
        editor_command({"EDITOR": "vim 'unbalanced"})


def scripted(tmp_path: Path, *steps: str, status: int = 0) -> tuple[Editor, list[str], Path]:
    """An Editor whose 'editor' writes each step in turn and records what it was shown."""
    plan, seen = tmp_path / "plan.json", tmp_path / "seen.json"
    plan.write_text(json.dumps(list(steps)))
    script = tmp_path / "ed.py"
    script.write_text(
        "import json, sys\nfrom pathlib import Path\n"
        f"plan, seen = json.loads(Path({str(plan)!r}).read_text()), Path({str(seen)!r})\n"
        "log = json.loads(seen.read_text()) if seen.exists() else []\n"
        "target = Path(sys.argv[-1]); log.append(target.read_text()); seen.write_text(json.dumps(log))\n"
        "target.write_text(plan[len(log) - 1])\n"
        f"sys.exit({status})\n")
    said: list[str] = []
    tty = open(os.devnull, "r+")
    editor = Editor(tty, said.append, argv=[PY, str(script)])
    return editor, said, seen


def shown(seen: Path) -> list[str]:
    return json.loads(seen.read_text())


def must_have_b(raw: object) -> object:
    if not isinstance(raw, dict) or "b" not in raw:
        raise EditRejected("b: field required")
    return raw


def test_invalid_edit_reopens_with_the_error_until_it_validates(tmp_path: Path) -> None:
    editor, said, seen = scripted(tmp_path, '{"a": 1, }', '// a comment the user added\n{"a": 2}', '{"a": 2, "b": 3}')
    assert editor.edit({"a": 1}, must_have_b, "doc", ["Header line"]) == {"a": 2, "b": 3}
    first, second, third = shown(seen)
    assert first.startswith("// Header line\n") and "ERROR" not in first
    assert "// ERROR" in second and "malformed JSON at line 1, column 10" in second
    assert second.rstrip().endswith('{"a": 1, }')  # the user's own text comes back, not the original
    assert "//   b: field required" in third and third.rstrip().endswith('{"a": 2}')
    assert sum("Edit rejected" in line for line in said) == 2


@pytest.mark.parametrize("steps, message", [
    (['{"a": 1}'], "No changes."),
    (["// only comments left\n\n"], "The file was emptied; the edit is discarded."),
    (['{"a": 5}', '{"a": 5}'], "Unchanged after the error; the edit is discarded."),
])
def test_edit_discarded(tmp_path: Path, steps: list[str], message: str) -> None:
    editor, said, _ = scripted(tmp_path, *steps)
    assert editor.edit({"a": 1}, must_have_b, "doc", []) is None
    assert said[-1] == message


def test_editor_failing_discards_the_edit(tmp_path: Path) -> None:
    editor, said, _ = scripted(tmp_path, '{"b": 1}', status=3)
    assert editor.edit({"a": 1}, must_have_b, "doc", []) is None
    assert said == ["The editor exited with status 3; the edit is discarded."]


def test_missing_editor_is_a_usage_error(tmp_path: Path) -> None:
    editor = Editor(open(os.devnull, "r+"), print, argv=[str(tmp_path / "no-such-editor")])
    with pytest.raises(UsageError, match="cannot start the editor"):
        editor.edit({"a": 1}, must_have_b, "doc", [])


@pytest.mark.parametrize("raw, message", [
    ({"tasks": []}, "expected a JSON list of tasks, got dict"),
    ([], "the task list is empty"),
    ([{"task_id": "a", "agent": "echo"}], "tasks[0].description: Field required"),
    ([{"task_id": "a", "agent": "echo", "description": "x", "dependencies": ["b"]},
      {"task_id": "b", "agent": "echo", "description": "y", "dependencies": ["a"]}], "dependency cycle"),
    ([{"task_id": "a", "agent": "nobody", "description": "x"}], "tasks[0].agent: unknown agent 'nobody'"),
    ([{"task_id": "a", "agent": "echo", "description": "x"},
      {"task_id": "a", "agent": "echo", "description": "y"}], "duplicate id 'a'"),
])
def test_task_edits_are_checked_like_input(raw: object, message: str) -> None:
    with pytest.raises(EditRejected) as caught:
        validate_tasks(raw, DispatchConfig())
    assert message in str(caught.value)


def test_valid_task_edit_keeps_unknown_keys_and_configured_agents() -> None:
    config = DispatchConfig.model_validate({"agents": {"writer": {"kind": "echo"}}})
    tasks = validate_tasks([{"task_id": "a", "agent": "writer", "description": "x", "owner": "me"}], config)
    assert tasks[0].agent == "writer" and tasks[0].model_extra == {"owner": "me"}


def test_context_edits_are_checked() -> None:
    with pytest.raises(EditRejected, match=r"global_context.items\[0\].content: Field required"):
        validate_context({"items": [{"id": "1", "source": "a.py"}]})
    assert validate_context({"items": [{"id": "1", "source": "a.py", "content": "x"}]}).items[0].source == "a.py"


# ------------------------------------------------------------------- summaries
def test_table_gives_the_last_column_the_remaining_width() -> None:
    rows = [["a", "x" * 200]]
    lines = table(["id", "description"], rows, total_width=60)
    assert all(len(line) <= 60 for line in lines) and lines[2].endswith("…")


def test_quorum_checkpoint_shows_every_deficiency_in_full() -> None:
    long = "Task 'b' depends on nothing but uses the output of 'a', " * 3
    state = PhaseState(run_id="r", tasks_data=[TaskSpec(task_id="a", agent="echo", description="d")],
                       quorum_result=QuorumResult(decision="RETRY", confidence=0.65, deficiencies=[long, "short"],
                                                  votes=[ValidatorVote(validator="rules", kind="rules",
                                                                       recommendation="RETRY", confidence=0.7)]))
    state.record(PhaseResult(phase=ExecutionPhase.QUORUM_VALIDATION, phase_name="Quorum Validation", success=True))
    text = "\n".join(checkpoint_lines("after", 1, state, 70))
    assert "Decision: RETRY   confidence: 65.0%" in text
    assert " ".join(text.split()).count(" ".join(long.split())) == 1  # wrapped, not clipped
    assert "rules      RETRY  70%" in text


def test_before_execution_checkpoint_lists_tasks_with_levels() -> None:
    state = PhaseState(run_id="r", tasks_data=[TaskSpec(task_id="a", agent="echo", description="first"),
                                               TaskSpec(task_id="b", agent="echo", description="second",
                                                        dependencies=["a"])],
                       plan=TaskPlan(levels=[["a"], ["b"]], critical_path=["a", "b"], critical_path_length=2))
    lines = checkpoint_lines("before", 4, state)
    assert lines[0].startswith("── Before phase 4: Parallel Execution")
    assert "Tasks (2):" in lines
    assert any(line.split() == ["1", "b", "echo", "a", "1", "second"] for line in lines)


def test_failed_phase_shows_its_error() -> None:
    state = PhaseState(run_id="r")
    state.record(PhaseResult(phase=ExecutionPhase.TASK_PLANNING, phase_name="Task Planning", success=False,
                             error="tasks[1].agent: unknown agent 'x'"))
    assert "  - tasks[1].agent: unknown agent 'x'" in checkpoint_lines("after", 2, state)


def test_shlex_quoting_of_resume_paths() -> None:
    from dispatch.cli.interactive.run import resume_command

    assert resume_command(Path("/tmp/my sessions/r.json")).endswith(shlex.quote("/tmp/my sessions/r.json"))
