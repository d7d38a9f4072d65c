"""Checkpoints through the real CLI in a pseudo-terminal: approve, edit, retry, skip, batch, failures."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from interactive_pty import OFF_TOPIC, PROMPT, TASKS, PtyCli, answer, finish, run_plain


@pytest.fixture
def pty_cli(tmp_path: Path) -> PtyCli:
    return PtyCli(tmp_path)


def test_approve_every_checkpoint(pty_cli: PtyCli) -> None:
    tasks = pty_cli.write("tasks.json", TASKS)
    child = pty_cli.spawn(f"-i -f {tasks} --save-phase-state {pty_cli.tmp / 'saved.json'}")
    child.expect(r"session file: (\S+)")
    session_file = Path(child.match.group(1))
    shown = answer(child, "Checkpoint after phase 2: Task Planning", "x")  # not a choice: asked again
    assert "critical path (2): parser -> tests" in shown and "Write unit tests for the config parser" in shown
    child.expect_exact("Please answer one of: a, e, r, s, b, q")
    child.expect(PROMPT)
    child.sendline("a")
    answer(child, "Checkpoint after phase 3: Context Filtering", "approve")
    shown = answer(child, "Checkpoint after phase 4: Parallel Execution", "a")
    assert "Results: 2 of 2 succeeded" in shown
    code, _ = finish(child)
    assert code == 0
    out = pty_cli.result()
    assert out["success"] is True and out["status"] == "succeeded"
    assert [r["task_id"] for r in out["results"]] == ["parser", "tests"]
    assert [p["skipped"] for p in out["timing_summary"]["phases"]] == [True, True, False, False, False]
    assert pty_cli.stored_run(out["run_id"])["status"] == "succeeded"
    assert json.loads((pty_cli.tmp / "saved.json").read_text())["run_id"] == out["run_id"]
    session = json.loads(session_file.read_text())
    assert session["status"] == "finished" and session["run_id"] == out["run_id"]
    assert session["decided"] == {"after-2": "approve", "after-3": "approve", "after-4": "approve"}


def test_edited_description_reaches_phase_4_after_a_rejected_edit(pty_cli: PtyCli) -> None:
    tasks = pty_cli.write("tasks.json", TASKS)
    fixed = [dict(TASKS["tasks"][0]),
             dict(TASKS["tasks"][1], description="Write property-based unit tests for the parser")]
    pty_cli.edits('[{"task_id": "tests", "agent": "echo", "description": "x", "dependencies": ["ghost"]}]',
                  json.dumps(fixed))
    child = pty_cli.spawn(f"-i -f {tasks}")
    answer(child, "Checkpoint after phase 2", "a")
    answer(child, "Checkpoint after phase 3", "e")
    child.expect_exact("Edit rejected: tasks[0].dependencies: unknown task 'ghost'")
    # phases 2 and 3 derive from the task list: they run again on the edit, then the checkpoint returns
    child.expect_exact("Phase 2: Task Planning")
    child.expect_exact("Phase 3: Context Filtering")
    shown = answer(child, "Checkpoint after phase 3", "a")
    assert "Write property-based unit tests for the parser" in shown
    answer(child, "Checkpoint after phase 4", "a")
    code, _ = finish(child)
    assert code == 0
    calls = pty_cli.editor_calls()
    assert len(calls) == 2 and "ERROR" not in calls[0]
    assert "// ERROR" in calls[1] and "unknown task 'ghost'" in calls[1]  # the reopened file shows why
    out = pty_cli.result()
    by_id = {r["task_id"]: r for r in out["results"]}
    assert by_id["tests"]["output"]["description"] == "Write property-based unit tests for the parser"
    assert "Write property-based unit tests for the parser" in by_id["tests"]["prompt"]
    assert by_id["parser"]["output"]["description"] == "Write the config parser module"


def test_quorum_fail_fixed_by_edit_then_retry_with_feedback(pty_cli: PtyCli) -> None:
    tasks = pty_cli.write("off_topic.json", OFF_TOPIC)
    pty_cli.edits(json.dumps(TASKS["tasks"]))
    child = pty_cli.spawn(f"-i --enable-quorum -f {tasks}")
    shown = answer(child, "Checkpoint after phase 1: Quorum Validation", "e")
    assert "Decision: FAIL" in shown and "no task mentions" in shown
    assert "approving ends the run as failed" in shown
    shown = answer(child, "Checkpoint after phase 1: Quorum Validation", "r")  # shown again with the edit
    assert "Write unit tests for the config parser" in shown and "Bake sourdough bread" not in shown
    child.expect_exact("Feedback for the validators and planner (Enter for none) > ")
    child.sendline("keep to the parser and its tests")
    child.expect_exact("Phase 1: Quorum Validation")  # a new chain submission for the retry
    shown = answer(child, "Checkpoint after phase 1: Quorum Validation", "b")
    assert "Decision: PASS" in shown and "keep to the parser and its tests" in shown
    for title in ("after phase 2", "after phase 3", "after phase 4"):
        child.expect_exact(f"Checkpoint {title}")
        child.expect_exact("→ approved (batch-approve)")
    code, _ = finish(child)
    assert code == 0
    out = pty_cli.result()
    assert out["success"] is True and out["quorum_result"]["decision"] == "PASS"
    assert {r["output"]["description"] for r in out["results"]} == {t["description"] for t in TASKS["tasks"]}
    state = pty_cli.stored_run(out["run_id"])
    assert state["input_extras"]["quorum_feedback"] == "keep to the parser and its tests"
    session = json.loads(next((pty_cli.state_dir / "sessions").glob("*.json")).read_text())
    actions = [(d["checkpoint"], d["action"], d["auto"]) for d in session["history"]]
    assert actions == [("after-1", "edit", False), ("after-1", "retry", False), ("after-1", "batch-approve", False),
                       ("after-2", "batch-approve", True), ("after-3", "batch-approve", True),
                       ("after-4", "batch-approve", True)]
    assert session["history"][0]["value"][0]["task_id"] == "parser"
    assert session["history"][1]["feedback"] == "keep to the parser and its tests"


def test_approving_a_failed_quorum_ends_the_run_failed(pty_cli: PtyCli) -> None:
    tasks = pty_cli.write("off_topic.json", OFF_TOPIC)
    child = pty_cli.spawn(f"-i --enable-quorum -f {tasks}")
    answer(child, "Checkpoint after phase 1", "a")
    code, transcript = finish(child)
    assert code == 1
    assert "Phase 2: Task Planning" not in transcript
    out = pty_cli.result()
    assert out["success"] is False and out["status"] == "failed" and "quorum decision FAIL" in out["error"]
    assert pty_cli.stored_run(out["run_id"])["status"] == "failed"


def test_skip_failed_quorum_and_phase_3_goes_on(pty_cli: PtyCli) -> None:
    tasks = pty_cli.write("off_topic.json", OFF_TOPIC)
    child = pty_cli.spawn(f"-i --enable-quorum -f {tasks}")
    answer(child, "Checkpoint after phase 1", "s")
    answer(child, "Checkpoint after phase 2", "a")
    answer(child, "Checkpoint after phase 3", "s")
    shown = answer(child, "Checkpoint after phase 4", "a")
    assert "Results: 2 of 2 succeeded" in shown
    code, _ = finish(child)
    assert code == 0
    out = pty_cli.result()
    assert out["success"] is True and out["quorum_result"] is None
    phases = {p["phase"]: p for p in out["phases_executed"]}
    for name in ("QUORUM_VALIDATION", "CONTEXT_FILTERING"):
        assert phases[name]["skipped"] is True
        assert phases[name]["output_data"]["reason"] == "skipped at the interactive checkpoint"
    assert phases["PARALLEL_EXECUTION"]["skipped"] is False
    assert pty_cli.stored_run(out["run_id"])["task_contexts"] == {}


def test_failed_tasks_at_the_last_checkpoint(pty_cli: PtyCli) -> None:
    failing = {"tasks": [dict(TASKS["tasks"][0], input_data={"fail": "disk full"}), TASKS["tasks"][1]]}
    tasks = pty_cli.write("failing.json", failing)
    child = pty_cli.spawn(f"-i -f {tasks}")
    answer(child, "Checkpoint after phase 2", "a")
    answer(child, "Checkpoint after phase 3", "a")
    shown = answer(child, "Checkpoint after phase 4", "s")  # nothing after phase 4 to skip to
    assert "Results: 0 of 2 succeeded" in shown and "disk full" in shown
    assert "approving ends the run as failed; retry runs it again" in shown
    child.expect_exact("Please answer one of: a, r, q")
    child.expect(PROMPT)
    child.sendline("a")
    code, _ = finish(child)
    assert code == 1
    out = pty_cli.result()
    assert out["success"] is False and out["status"] == "failed"
    assert [(r["task_id"], r["success"], r["skipped"]) for r in out["results"]] == [
        ("parser", False, False), ("tests", False, True)]


def test_retry_reruns_the_phase(pty_cli: PtyCli) -> None:
    tasks = pty_cli.write("tasks.json", TASKS)
    child = pty_cli.spawn(f"-i --stop-after-phase 2 -f {tasks}")
    answer(child, "Checkpoint after phase 2", "r")  # no feedback question outside the quorum
    child.expect_exact("Phase 2: Task Planning")
    answer(child, "Checkpoint after phase 2", "a")
    code, transcript = finish(child)
    assert code == 0 and "Feedback" not in transcript
    out = pty_cli.result()
    session = json.loads(next((pty_cli.state_dir / "sessions").glob("*.json")).read_text())
    assert [(d["action"], d["rerun"]) for d in session["history"]] == [("retry", [2]), ("approve", [])]
    assert [p["skipped"] for p in out["timing_summary"]["phases"]] == [True, True, False, True, True]


def test_checkpoint_before_phase_4_on_a_loaded_state(pty_cli: PtyCli) -> None:
    tasks = pty_cli.write("tasks.json", TASKS)
    prepared = pty_cli.tmp / "prepared.json"
    done = run_plain(pty_cli, "--stop-after-phase", "3", "--save-phase-state", str(prepared), "-f", str(tasks))
    assert done.returncode == 0, done.stderr
    pty_cli.edits({"describe": {"tests": "Write unit tests, edited before execution"}})
    child = pty_cli.spawn(f"-i --load-phase-state {prepared} --only-phase 4")
    shown = answer(child, "Before phase 4: Parallel Execution", "r")  # nothing ran yet: no retry here
    assert shown.endswith("[a]pprove  [e]dit  [s]kip  [b]atch-approve the rest  ")
    child.expect_exact("Please answer one of: a, e, s, b, q")
    child.expect(PROMPT)
    child.sendline("e")
    # the loaded plan and per-task context were made for the old list: they are made again
    child.expect_exact("Phase 2: Task Planning")
    child.expect_exact("Phase 3: Context Filtering")
    shown = answer(child, "Before phase 4", "a")
    assert "edited before execution" in shown
    answer(child, "Checkpoint after phase 4", "a")
    code, _ = finish(child)
    assert code == 0
    out = pty_cli.result()
    tests_result = next(r for r in out["results"] if r["task_id"] == "tests")
    assert tests_result["output"]["description"] == "Write unit tests, edited before execution"
    assert out["run_id"] != json.loads(prepared.read_text())["run_id"]


def test_edited_global_context_reaches_the_agents(pty_cli: PtyCli) -> None:
    workspace = pty_cli.tmp / "ws" / "src"
    workspace.mkdir(parents=True)
    (workspace / "db.py").write_text("def write_rows(rows):\n    # the database writer\n    return len(rows)\n")
    tasks = pty_cli.write("ctx.json", {
        "user_prompt": "database writer", "workspace_path": str(workspace.parent), "rag_queries": ["database writer"],
        "tasks": [{"task_id": "w", "agent": "echo", "description": "Write the database writer",
                   "context_requirements": ["rag:database writer"]}]})
    pty_cli.edits({"item_content": "EDITED CONTEXT MARKER"})
    child = pty_cli.spawn(f"-i --enable-context -f {tasks}")
    shown = answer(child, "Checkpoint after phase 0: Context Gathering", "e")
    assert "src/db.py" in shown and "Items: 2" in shown  # the workspace structure and the file
    answer(child, "Checkpoint after phase 0", "b")
    code, _ = finish(child)
    assert code == 0
    assert '"items"' in pty_cli.editor_calls()[0] and "GlobalContext" in pty_cli.editor_calls()[0]
    result = pty_cli.result()["results"][0]
    assert result["output"]["context_items"] >= 1 and "EDITED CONTEXT MARKER" in result["prompt"]
    assert "def write_rows" not in result["prompt"]


def test_task_json_on_stdin_with_prompts_on_the_terminal(pty_cli: PtyCli) -> None:
    tasks = pty_cli.write("tasks.json", TASKS)
    child = pty_cli.spawn(f"-i < {shlex.quote(str(tasks))}")
    answer(child, "Checkpoint after phase 2", "b")
    child.expect_exact("Checkpoint after phase 4")
    child.expect_exact("→ approved (batch-approve)")
    code, _ = finish(child)
    assert code == 0
    assert pty_cli.result()["success"] is True


def test_an_editor_that_cannot_start_leaves_the_checkpoint_open(pty_cli: PtyCli) -> None:
    tasks = pty_cli.write("tasks.json", TASKS)
    pty_cli.extra_env = {"EDITOR": str(pty_cli.tmp / "no-such-editor")}
    child = pty_cli.spawn(f"-i --stop-after-phase 2 -f {tasks}")
    answer(child, "Checkpoint after phase 2", "e")
    child.expect_exact("cannot start the editor")
    answer(child, "Checkpoint after phase 2", "a")
    code, _ = finish(child)
    assert code == 0 and pty_cli.result()["success"] is True
