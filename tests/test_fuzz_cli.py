"""Bad input at scale: hundreds of malformed breakdowns and state files thrown at the CLI.

Every one must exit 2 with a ``[DispatchRunner] ✗`` message, print no
traceback, leave stdout empty and submit nothing.  Inputs are broken by
construction (a valid breakdown plus one fault that must be refused), so a
pass means the CLI refused each for a reason, not that the generator got lucky.
Most run in-process through ``cli.main`` for speed; a handful run as real
subprocesses against a real Redis that must stay empty.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch import cli
from conftest import base_env, run_cli
from dispatch.models import ExecutionPhase, PhaseResult, PhaseState, TaskSpec

NOT_A_STRING = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
                         st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                              max_size=2))
NOT_A_LIST = st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.dictionaries(st.text(max_size=3),
                                                                                          st.integers(), max_size=2))
NAMES = st.text(alphabet="abcdefghij-_0123456789", min_size=1, max_size=8)


@st.composite
def valid_breakdown(draw) -> dict[str, Any]:
    ids = draw(st.lists(NAMES, min_size=1, max_size=6, unique=True))
    tasks = []
    for i, task_id in enumerate(ids):
        deps = draw(st.lists(st.sampled_from(ids[:i]), unique=True, max_size=2)) if i else []
        tasks.append({"task_id": task_id, "agent": draw(st.sampled_from(["echo", "sleep"])),
                      "description": draw(st.text(max_size=20)), "dependencies": deps})
    return {"user_prompt": draw(st.text(max_size=20)), "tasks": tasks,
            "config": {"max_workers": draw(st.integers(1, 8))}}


def set_in_task(key: str, values: st.SearchStrategy):
    @st.composite
    def fault(draw, doc):
        task = draw(st.sampled_from(doc["tasks"]))
        task[key] = draw(values)
        return doc
    return fault


def drop_from_task(key: str):
    @st.composite
    def fault(draw, doc):
        del draw(st.sampled_from(doc["tasks"]))[key]
        return doc
    return fault


@st.composite
def duplicate_id(draw, doc):
    doc["tasks"].append(dict(draw(st.sampled_from(doc["tasks"])), dependencies=[]))
    return doc


@st.composite
def unknown_dependency(draw, doc):
    draw(st.sampled_from(doc["tasks"]))["dependencies"] = ["zz-missing-" + draw(NAMES)]
    return doc


@st.composite
def cycle(draw, doc):
    task = draw(st.sampled_from(doc["tasks"]))
    others = [t for t in doc["tasks"] if t is not task]
    if not others:
        task["dependencies"] = [task["task_id"]]  # a task depending on itself
        return doc
    other = draw(st.sampled_from(others))
    task["dependencies"] = [other["task_id"]]
    other["dependencies"] = [task["task_id"]]
    return doc


@st.composite
def top_level(draw, doc):
    key, value = draw(st.sampled_from([
        ("tasks", None), ("tasks", []), ("tasks", "a,b"), ("tasks", 3), ("tasks", {"task_id": "a"}),
        ("config", {"max_workers": 0}), ("config", {"max_workers": -3}), ("config", {"max_workers": "many"}),
        ("config", {"timeout_seconds": 0}), ("config", {"timeout_seconds": -1}), ("config", []),
        ("rag_queries", "not a list"), ("user_prompt", ["x"]), ("workspace_path", {"a": 1})]))
    doc[key] = value
    return doc


def no_tasks_key(doc):
    return st.just({k: v for k, v in doc.items() if k != "tasks"})


FAULTS = [
    drop_from_task("task_id"), drop_from_task("agent"), drop_from_task("description"),
    set_in_task("task_id", st.one_of(st.just(""), NOT_A_STRING)),
    set_in_task("agent", st.one_of(st.just(""), NOT_A_STRING)),
    set_in_task("agent", NAMES.map(lambda n: "nope-" + n)),  # unknown agent
    set_in_task("description", NOT_A_STRING.filter(lambda v: v is not None)),
    set_in_task("dependencies", NOT_A_LIST),
    set_in_task("input_data", st.one_of(st.lists(st.integers(), max_size=2), st.text(max_size=4), st.integers())),
    set_in_task("context_requirements", st.one_of(st.integers(), st.dictionaries(st.text(max_size=2), st.integers(),
                                                                                  min_size=1, max_size=2))),
    duplicate_id, unknown_dependency, cycle, top_level, no_tasks_key,
]


@st.composite
def malformed_breakdown(draw) -> str:
    kind = draw(st.sampled_from(["fault", "fault", "fault", "truncated", "not-an-object", "garbage"]))
    doc = draw(valid_breakdown())
    if kind == "fault":
        return json.dumps(draw(draw(st.sampled_from(FAULTS))(doc)))
    if kind == "truncated":
        text = json.dumps(doc)
        return text[:draw(st.integers(1, len(text) - 1))]
    if kind == "not-an-object":
        return json.dumps(draw(st.one_of(st.integers(), st.text(max_size=10), st.lists(st.integers(), max_size=3),
                                         st.booleans(), st.none())))
    return draw(st.text(min_size=1, max_size=40).filter(lambda t: t.strip() and not _is_json(t)))


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def valid_state_json() -> str:
    state = PhaseState(run_id="20260101-000000-abcdef12", user_prompt="p",
                       tasks_data=[TaskSpec(task_id="a", agent="echo", description="d")])
    state.record(PhaseResult(phase=ExecutionPhase.TASK_PLANNING, phase_name="Task Planning", success=True))
    return state.model_dump_json()


@st.composite
def malformed_state(draw) -> str:
    text = valid_state_json()
    doc = json.loads(text)
    kind = draw(st.sampled_from(["truncated", "version", "phases", "field", "foreign", "garbage"]))
    if kind == "truncated":
        return text[:draw(st.integers(0, len(text) - 1))]
    if kind == "version":
        doc["schema_version"] = draw(st.one_of(st.integers().filter(lambda v: v != 1), st.text(max_size=3),
                                               st.none()))
    elif kind == "phases":
        doc["phases_executed"] = draw(st.one_of(NOT_A_LIST, st.lists(st.dictionaries(
            st.sampled_from(["phase", "success"]), st.text(max_size=4), max_size=2), min_size=1, max_size=2)))
    elif kind == "field":
        key = draw(st.sampled_from(["tasks_data", "run_id", "current_phase", "task_results", "quorum_result"]))
        doc[key] = draw(st.sampled_from([{"x": 1}, [1, 2], 1.5] + (["oops"] if key != "run_id" else [])))
    elif kind == "foreign":
        doc = draw(st.one_of(st.dictionaries(st.text(max_size=4), st.integers(), max_size=3), st.lists(st.integers())))
    else:
        return draw(st.binary(min_size=1, max_size=40)).decode("latin-1")
    return json.dumps(doc)


@pytest.fixture
def in_process(monkeypatch, tmp_path):
    """``cli.main`` with the environment of an embedded run and a Runner that must never be reached."""
    for name in [k for k in list(__import__("os").environ) if k.startswith("DISPATCH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DISPATCH_STATE_DIR", str(tmp_path / "state"))

    def submitted(*args, **kwargs):
        raise AssertionError("bad input reached Runner.run")

    monkeypatch.setattr("dispatch.runtime.client.Runner.run", submitted)

    def call(args: list[str], stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(args)
        return code, out.getvalue(), err.getvalue()

    return call


def assert_refused(code: int, out: str, err: str, what: str) -> None:
    assert code == 2, f"exit {code} for {what!r}:\n{err}"
    assert out == "", f"stdout not empty for {what!r}: {out!r}"
    assert "Traceback" not in err and err.startswith("[DispatchRunner] ✗ ") and len(err.strip()) > 25, err


@settings(max_examples=220, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=malformed_breakdown())
def test_malformed_breakdowns_exit_2_with_a_message_and_submit_nothing(in_process, text):
    assert_refused(*in_process([], stdin=text), text)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=malformed_state())
def test_malformed_state_files_exit_2_with_a_message_and_submit_nothing(in_process, tmp_path, text):
    path = tmp_path / "state.json"
    path.write_text(text, encoding="latin-1")
    code, out, err = in_process(["--load-phase-state", str(path), "--only-phase", "4"])
    assert_refused(code, out, err, text)
    assert str(path) in err  # the message names the file


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=malformed_breakdown())
def test_malformed_input_files_name_the_file(in_process, tmp_path, text):
    path = tmp_path / "tasks.json"
    path.write_text(text)
    code, out, err = in_process(["-f", str(path)])
    assert_refused(code, out, err, text)


SUBPROCESS_CASES = [
    b'{"tasks": [{"task_id": "a", "agent": "echo", "description": "x"}',
    b'{"tasks": [{"task_id": "a", "agent": "echo", "description": "x", "dependencies": ["a"]}]}',
    b'{"tasks": [{"task_id": "a", "agent": "warlock", "description": "x"}]}',
    b'{"tasks": [{"task_id": "a", "agent": "echo", "description": "x"},'
    b' {"task_id": "a", "agent": "echo", "description": "y"}]}',
    b'\xff\xfe\x00garbage',
    b'[1, 2, 3]',
    b'{"tasks": [], "config": {"max_workers": 0}}',
]


@pytest.mark.redis
@pytest.mark.slow
def test_real_processes_refuse_bad_input_before_touching_the_broker(redis_server, tmp_path):
    env = base_env(tmp_path, DISPATCH_BROKER_URL=redis_server.url, DISPATCH_KEY_PREFIX="fuzz")
    for raw in SUBPROCESS_CASES:
        (tmp_path / "in.json").write_bytes(raw)
        run = run_cli(["-f", str(tmp_path / "in.json")], env=env, timeout=30)
        assert run.returncode == 2 and run.stdout == "" and "Traceback" not in run.stderr, (raw, run.stderr)
        assert "✗" in run.stderr
    (tmp_path / "bad-state.json").write_text(valid_state_json()[:50])
    run = run_cli(["--load-phase-state", str(tmp_path / "bad-state.json")], env=env)
    assert run.returncode == 2 and "corrupt or truncated JSON" in run.stderr and "Traceback" not in run.stderr
    assert redis.Redis.from_url(redis_server.url).keys("*") == []  # nothing submitted, nothing saved


def test_binary_garbage_on_stdin_of_a_real_process(tmp_path):
    """Undecodable bytes on stdin: a message, not a UnicodeDecodeError traceback."""
    import subprocess

    from conftest import PYTHON, ROOT

    proc = subprocess.run([PYTHON, str(ROOT / "cli.py")], input=b"\xff\xfe\x00\x81{", capture_output=True,
                          env=base_env(tmp_path), cwd=ROOT, timeout=30)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2 and proc.stdout == b"" and "Traceback" not in err, err
