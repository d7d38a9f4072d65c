"""The guide's usage examples and test list, run as written through ``python cli.py`` (embedded mode)."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT
from dispatch.models import ExecutionPhase
from pipeline_cases import assert_guide_output_shape, breakdown, executed, make_workspace

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def tasks_json(tmp_path):
    return breakdown(make_workspace(tmp_path / "ws"))


def assert_clean_log(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert "[DispatchRunner]" in stderr


def test_1_backward_compatible_default_runs_2_3_4(cli, tasks_json):
    run = cli(stdin=tasks_json)
    assert run.returncode == 0, run.stderr
    out = run.json  # stdout holds exactly one JSON document
    assert_guide_output_shape(out)
    assert executed(out) == ["TASK_PLANNING", "CONTEXT_FILTERING", "PARALLEL_EXECUTION"]
    assert out["success"] is True and [r["task_id"] for r in out["results"]] == ["schema", "writer", "reader", "tests"]
    tests = out["results"][3]
    assert tests["output"]["dependencies"] == ["reader", "writer"]
    assert_clean_log(run.stderr)
    assert "=" * 80 in run.stderr and "Phase 4: Parallel Execution" in run.stderr
    assert "✓ Phase 4 completed in" in run.stderr and "(4 succeeded, 0 failed)" in run.stderr


def test_example_1_only_phase_0_saves_context(cli, tasks_json, tmp_path):
    state_file = tmp_path / "context_debug.json"
    run = cli("--only-phase", "0", "--enable-context", "--save-phase-state", str(state_file), stdin=tasks_json)
    assert run.returncode == 0, run.stderr
    assert executed(run.json) == ["CONTEXT_GATHERING"]
    assert run.json["context_summary"] and run.json["results"] == []
    state = json.loads(state_file.read_text())
    assert state["current_phase"] == 0 and state["global_context"]["items"]
    assert any("db.py" in item["source"] for item in state["global_context"]["items"])
    assert "Phase 0: Context Gathering" in run.stderr and "✓ Context gathered:" in run.stderr


def test_only_phase_0_without_enable_context_is_not_a_silent_success(cli, tasks_json):
    run = cli("--only-phase", "0", stdin=tasks_json)
    assert run.returncode == 0, run.stderr
    assert executed(run.json) == ["CONTEXT_GATHERING"]
    assert "--only-phase 0 enables context gathering" in run.stderr


def test_example_2_then_4_quorum_state_is_reused(cli, tasks_json, tmp_path):
    state_file = tmp_path / "validation_debug.json"
    first = cli("--stop-after-phase", "1", "--enable-context", "--enable-quorum",
                "--save-phase-state", str(state_file), stdin=tasks_json)
    assert first.returncode == 0, first.stderr
    assert executed(first.json) == ["CONTEXT_GATHERING", "QUORUM_VALIDATION"]
    saved = json.loads(state_file.read_text())
    assert saved["quorum_result"]["decision"] == "PASS"
    assert "Quorum decision: PASS (confidence:" in first.stderr and "Max retries: 3" in first.stderr

    second = cli("--load-phase-state", str(state_file), "--skip-phases", "0,1", stdin=tasks_json)
    assert second.returncode == 0, second.stderr
    out = second.json
    by_phase = {p["phase"]: p for p in out["phases_executed"]}
    # phases 0 and 1 come from the loaded state, unchanged, and are not re-run
    loaded = {p["phase"]: p for p in saved["phases_executed"]}
    for name in ("CONTEXT_GATHERING", "QUORUM_VALIDATION"):
        assert by_phase[name]["started_at"] == loaded[name]["started_at"]
    assert out["quorum_result"]["decision"] == "PASS"
    timing = {p["phase"]: p for p in out["timing_summary"]["phases"]}
    assert timing["CONTEXT_GATHERING"]["skipped"] and not timing["PARALLEL_EXECUTION"]["skipped"]
    # the loaded context reached phase 3 and then the agents
    schema = out["results"][0]
    assert schema["output"]["context_items"] > 0


def test_example_3_skip_phases_0_1(cli, tasks_json):
    run = cli("--skip-phases", "0,1", "--enable-context", "--enable-quorum", stdin=tasks_json)
    # context enabled but phase 0 skipped with nothing loaded: refused before anything runs
    assert run.returncode == 2 and "phase 0" in run.stderr and run.stdout == ""
    run = cli("--skip-phases", "0,1", stdin=tasks_json)
    assert run.returncode == 0, run.stderr
    assert executed(run.json) == ["TASK_PLANNING", "CONTEXT_FILTERING", "PARALLEL_EXECUTION"]


def test_only_phase_4_needs_prepared_tasks_then_resumes(cli, tasks_json, tmp_path):
    refused = cli("--only-phase", "4", stdin=tasks_json)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "--stop-after-phase 3" in refused.stderr and "--load-phase-state" in refused.stderr
    state_file = tmp_path / "prepared.json"
    prepared = cli("--stop-after-phase", "3", "--save-phase-state", str(state_file), stdin=tasks_json)
    assert prepared.returncode == 0 and executed(prepared.json) == ["TASK_PLANNING", "CONTEXT_FILTERING"]
    resumed = cli("--load-phase-state", str(state_file), "--only-phase", "4")  # tasks come from the state
    assert resumed.returncode == 0, resumed.stderr
    assert executed(resumed.json)[-1] == "PARALLEL_EXECUTION" and len(resumed.json["results"]) == 4


def test_failed_task_exits_1_and_skips_its_dependents(cli, tmp_path):
    run = cli(stdin=breakdown(make_workspace(tmp_path / "ws"), fail="reader"))
    assert run.returncode == 1
    results = {r["task_id"]: r for r in run.json["results"]}
    assert results["writer"]["success"] and not results["reader"]["success"]
    assert results["tests"]["skipped"] and "dependency 'reader' failed" in results["tests"]["error"]
    assert run.json["success"] is False and "✗ reader echo " in run.stderr
    assert "⊘ tests echo skipped: dependency 'reader' failed" in run.stderr  # one line per task
    assert [line.split("] ")[1][:1] for line in run.stderr.splitlines()
            if line.split("] ")[-1][:2] in ("✓ ", "✗ ", "⊘ ") and " echo " in line] == ["✓", "✓", "✗", "⊘"]


def test_help_documents_every_flag(cli):
    run = cli("--help")
    assert run.returncode == 0
    for flag in ("--only-phase", "--stop-after-phase", "--skip-phases", "--save-phase-state", "--load-phase-state",
                 "--enable-context", "--enable-quorum", "--interactive", "--input-file", "--resume-session"):
        assert flag in run.stdout


def test_input_file_and_schema(cli, tasks_json, tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text(tasks_json)
    run = cli("-f", str(path), "--skip-phases", "0,1")
    assert run.returncode == 0, run.stderr
    schema = cli("schema")
    assert schema.returncode == 0 and schema.json["required"] == ["tasks"]


BAD_INPUTS = {
    "malformed": ('{"tasks": [}', "malformed JSON at line 1, column"),
    "missing tasks": ('{"user_prompt": "x"}', "tasks: field required"),
    "duplicate ids": ('{"tasks": [{"task_id": "a", "agent": "echo", "description": "x"},'
                      '{"task_id": "a", "agent": "echo", "description": "y"}]}', "duplicate id 'a'"),
    "unknown dependency": ('{"tasks": [{"task_id": "a", "agent": "echo", "description": "x", '
                           '"dependencies": ["zz"]}]}', "tasks[0].dependencies: unknown task 'zz'"),
    "cycle": ('{"tasks": [{"task_id": "a", "agent": "echo", "description": "x", "dependencies": ["b"]},'
              '{"task_id": "b", "agent": "echo", "description": "y", "dependencies": ["a"]}]}', "cycle"),
    "empty stdin": ("", "no input"),
    "unknown agent": ('{"tasks": [{"task_id": "a", "agent": "wizard", "description": "x"}]}',
                      "tasks[0].agent: unknown agent 'wizard'"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_exits_2_with_a_message(cli, name):
    text, message = BAD_INPUTS[name]
    run = cli(stdin=text)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr and run.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["--only-phase", "1", "--skip-phases", "1"], "contradicts --skip-phases"),
    (["--only-phase", "7"], "numbered 0-4"),
    (["--skip-phases", "x"], "expected comma-separated phase numbers"),
    (["-f", "/nonexistent/tasks.json"], "cannot read input file"),
    (["--load-phase-state", "/nonexistent/state.json"], "cannot read state file"),
    (["--config", "/nonexistent/dispatch.toml"], "cannot read"),
    (["--no-wait"], "--no-wait needs a broker"),
])
def test_bad_usage_exits_2(cli, tasks_json, args, message):
    run = cli(*args, stdin=tasks_json)
    assert run.returncode == 2 and message in run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""


def test_corrupt_state_file_is_refused_and_left_untouched(cli, tasks_json, tmp_path):
    state_file = tmp_path / "s.json"
    state_file.write_text('{"phases_executed": [{"phase": "CONTEXT_GAT')
    run = cli("--load-phase-state", str(state_file), "--save-phase-state", str(state_file), stdin=tasks_json)
    assert run.returncode == 2 and "truncated" in run.stderr and "Traceback" not in run.stderr
    assert state_file.read_text() == '{"phases_executed": [{"phase": "CONTEXT_GAT'


def test_bundled_example_does_real_work(cli):
    run = cli("--config", "examples/dispatch.toml", "-f", "examples/tasks.json", "--enable-context",
              "--enable-quorum", cwd=ROOT)  # as the README runs it: in this checkout
    assert run.returncode == 0, run.stderr
    results = {r["task_id"]: r for r in run.json["results"]}
    assert results["inventory"]["output"]["json"]["files"] > 10
    report = results["summary"]["output"]["json"]
    assert report["inputs"] == ["inventory", "largest", "todos"] and "files" in report["report"]


def test_runs_and_show_list_the_embedded_history(cli, tasks_json):
    run = cli("--skip-phases", "0,1", stdin=tasks_json)
    listed = cli("runs", "--json")
    assert listed.returncode == 0 and listed.json["runs"][0]["run_id"] == run.json["run_id"]
    shown = cli("show", run.json["run_id"], "--json")
    assert shown.returncode == 0 and shown.json["status"] == "succeeded"
    table = cli("show", run.json["run_id"])
    assert table.returncode == 0 and table.stdout.startswith(f"dispatch run {run.json['run_id']} · succeeded")
    missing = cli("show", "nope")
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr


def test_phase_names_in_state_match_the_guide(tmp_path, cli, tasks_json):
    state_file = tmp_path / "s.json"
    cli("--save-phase-state", str(state_file), stdin=tasks_json)
    names = {p["phase"]: p["phase_name"] for p in json.loads(state_file.read_text())["phases_executed"]}
    assert names == {p.value: p.title for p in ExecutionPhase}


def test_phase_0_failure_is_not_critical(cli):
    tasks = json.dumps({"user_prompt": "count files", "workspace_path": "/nonexistent/workspace",
                        "tasks": [{"task_id": "a", "agent": "echo", "description": "count the files",
                                   "context_requirements": ["rag:files"]}]})
    run = cli("--enable-context", stdin=tasks)
    assert run.returncode == 0, run.stderr
    phase0 = run.json["phases_executed"][0]
    assert phase0["phase"] == "CONTEXT_GATHERING" and not phase0["success"] and "does not exist" in phase0["error"]
    assert executed(run.json)[-1] == "PARALLEL_EXECUTION" and run.json["success"]
    assert "⚠ Phase 0 failed" in run.stderr


def test_quorum_fail_aborts_with_exit_1(cli, tmp_path):
    """The guide's motivating failure: a postgres adapter broken down as user authentication."""
    tasks = json.dumps({"user_prompt": "Build a postgres adapter", "tasks": [
        {"task_id": "model", "agent": "echo", "description": "Create UserAuthentication model"},
        {"task_id": "login", "agent": "echo", "description": "Implement login endpoint", "dependencies": ["model"]}]})
    state_file = tmp_path / "s.json"
    run = cli("--enable-quorum", "--save-phase-state", str(state_file), stdin=tasks)
    assert run.returncode == 1, run.stderr
    out = run.json
    assert out["success"] is False and out["quorum_result"]["decision"] == "FAIL"
    assert executed(out) == ["QUORUM_VALIDATION"] and out["results"] == []
    assert "Quorum decision: FAIL" in run.stderr and "postgres" in run.stderr
    assert json.loads(state_file.read_text())["status"] == "failed"


def test_dispatch_console_script_runs_the_same_cli(tmp_path, cli):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "dispatch"
    if not script.exists():
        script = shutil.which("dispatch")
    assert script, "the dispatch console script is not installed (pip install -e .)"
    tasks = '{"tasks": [{"task_id": "a", "agent": "echo", "description": "x"}]}'
    proc = subprocess.run([str(script), "--skip-phases", "0,1"], input=tasks, capture_output=True, text=True,
                          env=cli.env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["output"]["description"] == "x"


def test_unknown_keys_reach_the_agents(cli):
    tasks = json.dumps({"user_prompt": "p", "team": "storage", "tasks": [
        {"task_id": "a", "agent": "echo", "description": "x", "priority": "high"}]})
    run = cli(stdin=tasks)
    assert run.returncode == 0, run.stderr
    prompt = run.json["results"][0]["prompt"]
    assert '"team": "storage"' in prompt and '"priority": "high"' in prompt
