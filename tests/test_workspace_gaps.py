"""The workspace gaps of issue 13: the changes a person dropped at the phase-4 checkpoint stay dropped in every
later integration of the run (phase 4 retried), are shown in the HTML report and the stderr lines, and the
"left out of" error has one wording.  On real repositories, without a broker (fast)."""
from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.cli.log import integration_lines
from dispatch.models import ExecutionPhase, PhaseState
from dispatch.pipeline.execution import close_execution, left_out_error
from dispatch.pipeline.workspace_run import integration_parts, rebuild_integration
from dispatch.report import render_html
from dispatch.tasks.agents import integrate_changes

from test_interactive_changes import CALC, run_state
from test_workspace import git, make_repo

EDITS = {"a": ("a.txt", "A\n"), "b": ("b.txt", "B\n"), "c": ("c.txt", "C\n")}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "user", {"calc.py": CALC})


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("DISPATCH_GIT_CACHE", str(tmp_path / "cache"))  # where phase 4's closer integrates
    return tmp_path / "cache"


def retried_phase_4(state: PhaseState):
    """What phase 4's closer does when the phase runs again: integrate the tasks' changes and close."""
    finished = {r.task_id: r for r in state.task_results}
    integration, error = integrate_changes(state, finished)
    assert error is None
    state.phases_executed = [r for r in state.phases_executed if r.phase != ExecutionPhase.PARALLEL_EXECUTION]
    return close_execution(state, finished, 0.0, integration=integration)


def test_a_drop_survives_a_retried_phase_4_and_a_saved_state(repo: Path, cache: Path):
    state = run_state(repo, cache, "keep", EDITS)
    rebuild_integration(state, ["b"], cache_root=cache)
    assert state.dropped_changes == ["b"]
    state = PhaseState.model_validate_json(state.model_dump_json())  # the run saved, loaded by a worker
    assert [t for t, _ in integration_parts(state, {r.task_id: r for r in state.task_results})[1]] == ["b"]
    result = retried_phase_4(state)
    assert state.integration.merged == ["a", "c"] and state.integration.dropped == ["b"]
    assert "b.txt" not in git(repo, "ls-tree", "--name-only", state.integration.ref).split()
    assert result.success and result.output_data["integration"]["dropped"] == 1
    # put back at the checkpoint: the next integration merges it again
    rebuild_integration(state, [], cache_root=cache)
    assert state.dropped_changes == []
    retried_phase_4(state)
    assert state.integration.merged == ["a", "b", "c"] and state.integration.dropped == []


def test_the_left_out_error_has_one_wording_for_the_closer_and_the_rebuild(repo: Path, cache: Path):
    state = run_state(repo, cache, "word", EDITS, deps={"c": ["a"]})
    rebuild_integration(state, ["a"], cache_root=cache)  # c builds on a: left out, no file of its own
    rebuilt = state.result_for(ExecutionPhase.PARALLEL_EXECUTION).error
    result = retried_phase_4(state)
    assert result.success is False and result.error == rebuilt == left_out_error(state.integration)
    assert result.error == (f"integration: left out of {state.integration.ref}: "
                            f"c (builds on a, which is not in the integration)")


def test_the_report_and_the_log_name_the_dropped_changes(repo: Path, cache: Path):
    state = run_state(repo, cache, "show", EDITS, deps={"c": ["a"]})
    rebuild_integration(state, ["a", "b"], cache_root=cache)
    lines = integration_lines(state)
    assert "⚠ dropped at the checkpoint: a, b (each change stays on its own ref)" in lines
    assert "✗ c left out: builds on a, which is not in the integration (its change stays on its own ref)" in lines
    page = render_html(state)
    assert "Dropped at the checkpoint: <code>a</code>, <code>b</code>" in page
    rebuild_integration(state, [], cache_root=cache)
    assert not any("dropped" in line for line in integration_lines(state))
    assert "Dropped at the checkpoint" not in render_html(state)
