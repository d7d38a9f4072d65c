"""The config a run is planned with travels in its state, and every task's agent is resolved before
anything is submitted (issue: the guide's save/load flow broke with a config file; a task naming an
unconfigured kind passed the quorum and failed in phase 2)."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.timeout(180)

CODER = '[agents.coder]\nkind = "shell"\ncommand = ["echo", "coded {task_id}"]\n'
TASKS = json.dumps({"tasks": [
    {"task_id": "a", "agent": "coder", "description": "first"},
    {"task_id": "b", "agent": "coder", "description": "second", "dependencies": ["a"]}]})


def test_a_loaded_state_runs_phase_4_with_the_config_it_was_planned_with(cli, tmp_path):
    config = tmp_path / "agents.toml"
    config.write_text(CODER)
    state_file = tmp_path / "s.json"
    first = cli("--config", str(config), "--stop-after-phase", "3", "--save-phase-state", str(state_file),
                stdin=TASKS)
    assert first.returncode == 0, first.stderr
    saved = json.loads(state_file.read_text())
    assert saved["config"]["agents"]["coder"]["kind"] == "shell"
    assert saved["plan"]["agent_configs"]["coder"]["command"] == ["echo", "coded {task_id}"]

    # as the guide writes it: no --config the second time
    second = cli("--load-phase-state", str(state_file), "--only-phase", "4", "-q")
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in second.stderr and second.stderr == ""
    out = second.json
    assert out["success"] is True
    assert [p["phase"] for p in out["timing_summary"]["phases"] if not p["skipped"]] == ["PARALLEL_EXECUTION"]
    assert [r["output"]["stdout"].strip() for r in out["results"]] == ["coded a", "coded b"]


def test_a_config_given_again_replaces_the_saved_one_and_is_checked_before_submitting(cli, tmp_path):
    config = tmp_path / "agents.toml"
    config.write_text(CODER)
    state_file = tmp_path / "s.json"
    assert cli("--config", str(config), "--stop-after-phase", "3", "--save-phase-state", str(state_file),
               stdin=TASKS).returncode == 0
    other = tmp_path / "other.toml"
    other.write_text('[agents.writer]\nkind = "echo"\n')
    refused = cli("--load-phase-state", str(state_file), "--only-phase", "4", "--config", str(other))
    assert refused.returncode == 2 and refused.stdout == ""
    assert "unknown agent 'coder' (known: echo, sleep, writer)" in refused.stderr
    assert "Traceback" not in refused.stderr and "Phase 4" not in refused.stderr

    replaced = tmp_path / "replaced.toml"
    replaced.write_text('[agents.coder]\nkind = "shell"\ncommand = ["echo", "again {task_id}"]\n')
    rerun = cli("--load-phase-state", str(state_file), "--only-phase", "4", "--config", str(replaced))
    assert rerun.returncode == 0, rerun.stderr
    assert [r["output"]["stdout"].strip() for r in rerun.json["results"]] == ["again a", "again b"]


def test_a_kind_that_is_not_configured_is_refused_before_phase_1(cli):
    tasks = json.dumps({"tasks": [{"task_id": "a", "agent": "shell", "description": "list the files"},
                                  {"task_id": "b", "agent": "echo", "description": "report"}]})
    run = cli("--enable-quorum", stdin=tasks)
    assert run.returncode == 2 and run.stdout == ""
    assert "tasks[0].agent: unknown agent 'shell' (known: echo, sleep)" in run.stderr
    assert "Phase 1" not in run.stderr and "Traceback" not in run.stderr


def test_the_quorum_is_told_the_names_phase_2_will_accept():
    from dispatch.agents import known_agent_names
    from dispatch.config import DispatchConfig
    from dispatch.quorum.rules import check_breakdown
    from dispatch.models import TaskSpec

    config = DispatchConfig.model_validate({"agents": {"coder": {"kind": "shell", "command": ["true"]}}})
    known = known_agent_names(config)
    assert known == {"coder", "echo", "sleep"}
    tasks = [TaskSpec(task_id="a", agent="shell", description="list the files in the repository")]
    report = check_breakdown("list files", tasks, known)
    assert "Task 'a' uses unknown agent 'shell' (known: coder, echo, sleep)" in report.majors
