"""Issue 14, bad input and limits: size, depth, digits, finite and strict numbers, loaded states checked like
fresh input, a linear planner.  Each case is exit 2 with the fault's path on the real CLI, never a traceback."""
from __future__ import annotations

import json
import time

import pytest

from dispatch.errors import InputError, StateFileError
from dispatch.models import TaskSpec
from dispatch.pipeline.inputs import MAX_DEPTH, parse_input
from dispatch.planning.graph import plan_tasks, topological_levels
from dispatch.store.state import load_state_file

ONE = {"task_id": "a", "agent": "echo", "description": "x"}


def breakdown(**task_extra) -> dict:
    return {"tasks": [{**ONE, **task_extra}]}


def refused(cli, text: str, *args: str):
    run = cli(*args, stdin=text)
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr and run.stdout == ""
    return run.stderr


# ----------------------------------------------------------------- unit: input
@pytest.mark.parametrize("text, message", [
    (json.dumps(breakdown(input_data={"n": int("9" * 500)})), r"tasks\[0\]\.input_data\.n: an integer of 500 digits"),
    ('{"tasks": [{"task_id": "a", "agent": "echo", "description": "x", "input_data": {"x": 1e999}}]}',
     r"tasks\[0\]\.input_data\.x: the number 1e999 is not finite"),
    ('{"tasks": [{"task_id": "a", "agent": "echo", "description": "x", "input_data": {"x": NaN}}]}',
     r"tasks\[0\]\.input_data\.x: NaN is not a JSON number"),
    (json.dumps({**breakdown(), "config": {"max_workers": "5"}}), r"config\.max_workers: Input should be a valid integer"),
    (json.dumps({**breakdown(), "config": {"timeout_seconds": True}}), r"config\.timeout_seconds: Input should be a valid number"),
    (json.dumps(breakdown(estimated_duration_ms="10")), r"tasks\[0\]\.estimated_duration_ms"),
])
def test_numbers_are_strict_finite_and_bounded(text, message):
    with pytest.raises(InputError, match=message):
        parse_input(text)


def test_depth_is_limited_with_the_path_even_past_pythons_recursion_limit():
    moderately = json.dumps(breakdown(input_data={"deep": json.loads("[" * 150 + "]" * 150)}))
    with pytest.raises(InputError, match=rf"tasks\[0\]\.input_data\.deep(\[0\])+: nested deeper than {MAX_DEPTH}"):
        parse_input(moderately)
    hopeless = '{"tasks": [{"task_id": "a", "agent": "echo", "description": "x", "input_data": {"d": ' \
        + "[" * 50_000 + "]" * 50_000 + "}}]}"
    with pytest.raises(InputError, match=rf"nested deeper than {MAX_DEPTH} levels at line 1, column \d+"):
        parse_input(hopeless)
    fine = json.dumps(breakdown(input_data={"deep": json.loads("[" * 80 + "]" * 80)}))
    assert parse_input(fine).tasks[0].input_data["deep"]


def test_input_over_the_size_limit_is_refused_before_parsing(monkeypatch):
    monkeypatch.setenv("DISPATCH_MAX_INPUT_BYTES", "4096")
    text = json.dumps(breakdown(description="y" * 5000))
    started = time.perf_counter()
    with pytest.raises(InputError, match="larger than 4096 bytes"):
        parse_input(text + " " * 10_000_000)
    assert time.perf_counter() - started < 1.0
    assert parse_input(json.dumps(breakdown())).tasks[0].task_id == "a"


# ----------------------------------------------------------------- unit: state
def saved_state(cli, tmp_path, tasks=None) -> dict:
    path = tmp_path / "s.json"
    run = cli("--stop-after-phase", "3", "--save-phase-state", str(path), stdin=json.dumps(
        {"tasks": tasks or [ONE, {**ONE, "task_id": "b", "dependencies": ["a"]}]}))
    assert run.returncode == 0, run.stderr
    return json.loads(path.read_text())


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["tasks_data"][1].update(dependencies=["ghost"]), r"tasks_data\[1\]\.dependencies: unknown task 'ghost'"),
    (lambda s: s["tasks_data"][0].update(dependencies=["b"]), "dependency cycle"),
    (lambda s: s["tasks_data"][1].update(task_id="a", dependencies=[]), r"tasks_data\[1\]\.task_id: duplicate id 'a'"),
    (lambda s: s["tasks_data"][0]["input_data"].update(n=int("7" * 3000)), r"tasks_data\[0\]\.input_data\.n: an integer"),
    (lambda s: s["run_config"].update(max_workers="5"), r"run_config\.max_workers"),
])
def test_a_loaded_state_is_validated_like_fresh_input(cli, tmp_path, edit, message):
    state = saved_state(cli, tmp_path)
    edit(state)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(state))
    with pytest.raises(StateFileError, match=message):
        load_state_file(path)
    stderr = refused(cli, "", "--load-phase-state", str(path), "--only-phase", "4")
    assert "edited.json" in stderr


def test_a_deep_or_infinite_state_file_is_exit_2(cli, tmp_path):
    state = saved_state(cli, tmp_path)
    text = json.dumps(state).replace('"input_data": {}', '"input_data": {"d": ' + "[" * 40_000 + "]" * 40_000 + "}", 1)
    (tmp_path / "deep.json").write_text(text)
    assert "nested deeper than" in refused(cli, "", "--load-phase-state", str(tmp_path / "deep.json"), "--only-phase", "4")
    text = json.dumps(state).replace('"input_data": {}', '"input_data": {"x": Infinity}', 1)
    (tmp_path / "inf.json").write_text(text)
    assert "Infinity is not a JSON number" in refused(cli, "", "--load-phase-state", str(tmp_path / "inf.json"),
                                                      "--only-phase", "4")


# --------------------------------------------------------------- CLI: input
def test_cli_exit_2_with_the_path_for_deep_huge_and_non_finite_input(cli):
    deep = '{"tasks": [{"task_id": "a", "agent": "echo", "description": "x", "input_data": {"d": ' \
        + "[" * 30_000 + "]" * 30_000 + "}}]}"
    assert "nested deeper than" in refused(cli, deep)
    assert "tasks[0].input_data.n: an integer of 5000 digits" in refused(
        cli, '{"tasks": [{"task_id": "a", "agent": "echo", "description": "x", "input_data": {"n": '
        + "1" * 5000 + "}}]}")
    assert "config.timeout_seconds" in refused(cli, json.dumps({**breakdown(), "config": {"timeout_seconds": True}}))
    assert "config.max_workers" in refused(cli, json.dumps({**breakdown(), "config": {"max_workers": "5"}}))
    big = json.dumps(breakdown(description="z" * 3000))
    run = cli(stdin=big, extra_env={"DISPATCH_MAX_INPUT_BYTES": "2048"})
    assert run.returncode == 2 and "larger than 2048 bytes" in run.stderr and "Traceback" not in run.stderr


# ------------------------------------------------------------------ planning
def chain(n: int) -> list[TaskSpec]:
    return [TaskSpec(task_id=f"t{i}", agent="echo", description="x", dependencies=[f"t{i - 1}"] if i else [])
            for i in range(n)]


def test_a_20000_task_chain_plans_in_well_under_a_second():
    tasks = chain(20_000)
    started = time.perf_counter()
    plan = plan_tasks(tasks, lambda name: "echo")
    elapsed = time.perf_counter() - started
    assert len(plan.levels) == 20_000 and plan.critical_path_length == 20_000
    assert elapsed < 3.0, f"planning a 20,000-task chain took {elapsed:.2f}s"  # ~0.3 s here; generous for CI


def test_levels_keep_input_order_and_longest_dependency():
    tasks = [TaskSpec(task_id="a", agent="e", description=""),
             TaskSpec(task_id="c", agent="e", description="", dependencies=["a", "b"]),
             TaskSpec(task_id="b", agent="e", description="", dependencies=["a"]),
             TaskSpec(task_id="d", agent="e", description=""),
             TaskSpec(task_id="e", agent="e", description="", dependencies=["a"])]
    assert topological_levels(tasks) == [["a", "d"], ["b", "e"], ["c"]]
