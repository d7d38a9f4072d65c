"""Small hardening behind the CLI: output_schema on jsonschema, tiktoken offline, YAML configs, agent help,
the per-task log lines, the live line's width, and the trace of ``config.trace_dir``."""
from __future__ import annotations

import json
import subprocess
import textwrap

import pytest

from conftest import PYTHON, ROOT
from dispatch.agents.resolve import resolve_agents
from dispatch.agents.schema_check import check_schema, validate
from dispatch.cli.log import task_line, task_lines
from dispatch.cli.progress import Progress
from dispatch.cli.trace import trace_events, trace_paths
from dispatch.config import DispatchConfig
from dispatch.errors import ConfigError
from dispatch.models import ExecutionPhase, PhaseState, TaskResult
from test_report import sample_state


# ------------------------------------------------------------ output_schema
class Pick:
    """A pydantic-shaped schema: the model refers to its parts through ``$ref`` into ``$defs``."""

    SCHEMA = {"$defs": {"File": {"type": "object", "required": ["path"],
                                 "properties": {"path": {"type": "string", "minLength": 1}}}},
              "type": "object", "required": ["files"],
              "properties": {"files": {"type": "array", "items": {"$ref": "#/$defs/File"}, "uniqueItems": True},
                             "mode": {"not": {"const": "delete"}},
                             "meta": {"type": "object", "minProperties": 1},
                             "owner": {"type": "string", "format": "email"}}}


@pytest.mark.parametrize("value, errors", [
    ({"files": [{"path": "a.py"}]}, []),
    ({"files": [{"path": 3}]}, ["$.files[0].path: expected string, got integer"]),
    ({"files": [{}]}, ["$.files[0]: missing required property 'path'"]),
    ({"files": [{"path": "a"}, {"path": "a"}]}, ["$.files: items are not unique"]),
    ({"files": [], "mode": "delete"}, ["$.mode: must not match the schema under 'not'"]),
    ({"files": [], "meta": {}}, ["$.meta: fewer than 1 properties"]),
    ({"files": [], "owner": "not-an-address"}, ["$.owner: 'not-an-address' is not a valid 'email'"]),
])
def test_what_the_hand_written_checker_ignored_is_now_checked(value, errors):
    check_schema(Pick.SCHEMA, "s")
    assert validate(value, Pick.SCHEMA) == errors


def test_a_real_pydantic_schema_is_checked():
    from dispatch.models import TaskSpec

    schema = {"type": "object", "properties": {"tasks": {"type": "array", "items": {"$ref": "#/$defs/TaskSpec"}}},
              "$defs": {"TaskSpec": TaskSpec.model_json_schema()}, "required": ["tasks"]}
    check_schema(schema, "s")
    assert validate({"tasks": [{"task_id": "a", "agent": "echo", "description": "d"}]}, schema) == []
    assert validate({"tasks": [{"task_id": "a", "agent": "echo"}]}, schema) == [
        "$.tasks[0]: missing required property 'description'"]


@pytest.mark.parametrize("schema, message", [
    ({"$ref": "https://example.com/schema.json"}, "$.$ref: 'https://example.com/schema.json' points outside"),
    ({"properties": {"u": {"type": "string", "format": "no-such-format"}}},
     "$.properties.u.format: 'no-such-format' cannot be checked here"),
    ({"type": "text"}, "$.type: unknown type 'text'"),
    ({"properties": {"a": {"pattern": "("}}}, "$.properties.a.pattern: invalid regular expression '('"),
    ({"minItems": -1}, "$.minItems:"),
])
def test_what_cannot_be_checked_is_refused_by_name(schema, message):
    with pytest.raises(ConfigError) as err:
        check_schema(schema, "agents.w: output_schema")
    assert str(err.value).startswith("agents.w: output_schema: ") and message in str(err.value)


def test_a_property_named_format_is_not_a_format_keyword():
    schema = {"properties": {"format": {"type": "string"}, "$ref": {"type": "string"}},
              "examples": [{"format": "anything"}]}
    check_schema(schema, "s")
    assert validate({"format": 1}, schema) == ["$.format: expected string, got integer"]


# ---------------------------------------------------------------- tiktoken
NETWORK_GUARD = textwrap.dedent("""
    import json, socket, sys
    attempts = []
    def refuse(*args, **kwargs):
        attempts.append(repr(args[1:] if args and isinstance(args[0], socket.socket) else args)[:80])
        raise OSError("network denied by the test")
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse
""")


def guarded(code: str, cache: str) -> dict:
    env = {"PATH": "/usr/bin:/bin", "TIKTOKEN_CACHE_DIR": cache, "HOME": cache}
    done = subprocess.run([PYTHON, "-c", NETWORK_GUARD + textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_tiktoken_never_touches_the_network(tmp_path):
    pytest.importorskip("tiktoken")
    # without dispatch's guard, tiktoken fetches its encoding: the guard below would see it
    plain = guarded("""
        import tiktoken
        try:
            tiktoken.get_encoding("cl100k_base")
        except Exception as exc:
            pass
        print(json.dumps({"attempts": attempts}))
    """, str(tmp_path))
    assert plain["attempts"], "tiktoken did not try the network: this test proves nothing here"
    # dispatch counts offline with the estimate, and tries nothing (a stale cached file neither)
    (tmp_path / "not-the-encoding").write_text("garbage")
    ours = guarded("""
        import dispatch.context  # importing loads nothing
        from dispatch.context import tokens
        before = list(attempts)
        n = tokens.count_tokens("def connect(dsn):\\n    return Pool(dsn, size=4)\\n")
        print(json.dumps({"attempts": attempts, "before": before, "n": n, "name": tokens.tokenizer_name(),
                          "legacy": tokens.TOKENIZER}))
    """, str(tmp_path))
    assert ours["attempts"] == [] and ours["name"] == ours["legacy"] == "estimate" and ours["n"] > 5


# -------------------------------------------------------------------- YAML
def test_yaml_config_is_read(tmp_path):
    path = tmp_path / "dispatch.yaml"
    path.write_text("agents:\n  coder:\n    kind: shell\n    command: [my-agent, '{prompt}']\n"
                    "context:\n  budget_tokens: 1200\n")
    config = DispatchConfig.load(str(path))
    assert config.agents["coder"].kind == "shell" and config.context.budget_tokens == 1200
    (tmp_path / "empty.yml").write_text("")
    assert DispatchConfig.load(str(tmp_path / "empty.yml")) == DispatchConfig()


@pytest.mark.parametrize("name, text, message", [
    ("bad.yaml", "agents: [unclosed", "invalid YAML: while parsing a flow sequence"),
    ("list.yaml", "- a\n- b\n", "(root): Input should be a valid dictionary"),
    ("obj.yaml", "agents: !!python/object:os.system {}\n", "invalid YAML"),
    ("secret.yml", "agents:\n  w:\n    kind: llm\n    api_key: sk-123\n", "use api_key_env"),
    ("conf.cfg", "kind = 'x'", "(a config file is TOML (.toml), YAML (.yaml, .yml) or JSON)"),
    ("bad.toml", "agents = [", "invalid TOML"),
])
def test_bad_configs_are_refused_naming_file_and_format(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        DispatchConfig.load(str(path))
    assert str(err.value).startswith(f"config file {path}: ") and message in str(err.value)


# ---------------------------------------------------------- unknown agents
def test_unknown_agents_say_how_to_define_them():
    with pytest.raises(ConfigError) as err:
        resolve_agents(["coder", "debug", "echo"], DispatchConfig())
    text = str(err.value)
    assert text.startswith("unknown agents 'coder', 'debug' (known: echo, sleep). ")
    assert "--config FILE" in text and "DISPATCH_CONFIG=FILE" in text
    assert "[agents.coder]\nkind = " in text and "[agents.debug]\nkind = " in text
    import tomllib

    snippet = text.split("for example:\n\n", 1)[1]
    assert set(tomllib.loads(snippet)["agents"]) == {"coder", "debug"}  # the snippet is valid TOML


# ------------------------------------------------------- per-task log lines
def test_one_line_per_task_after_phase_4():
    ok = TaskResult(task_id="scan-tree", agent="shell", success=True, duration_ms=12.3,
                    output={"exit_code": 0, "stdout": "\n42 files\nmore", "stderr": ""})
    echo = TaskResult(task_id="plan", agent="echo", success=True, duration_ms=3, output={"description": "Plan it"})
    bad = TaskResult(task_id="build", agent="shell", success=False, duration_ms=950, error="make: *** [all] Error 2\n")
    skipped = TaskResult(task_id="ship", agent="echo", success=False, skipped=True,
                         error="skipped: dependency 'build' failed")
    assert task_line(ok) == "✓ scan-tree shell 12 ms — 42 files"
    assert task_line(echo) == "✓ plan echo 3.0 ms — Plan it"
    assert task_line(bad) == "✗ build shell 950 ms — make: *** [all] Error 2"
    assert task_line(skipped) == "⊘ ship echo skipped: dependency 'build' failed"


def test_a_large_run_lists_failures_first_and_counts_the_rest():
    state = PhaseState(run_id="r1", task_results=[
        TaskResult(task_id=f"t{i}", agent="echo", success=i != 57, duration_ms=1, error=None if i != 57 else "x")
        for i in range(100)])
    lines = task_lines(state)
    assert len(lines) == 21 and lines[0].startswith("✗ t57 echo")
    assert lines[-1] == "… and 80 more tasks (80 succeeded): dispatch show r1"


# ------------------------------------------------------------ the live line
@pytest.mark.parametrize("columns", [200, 120, 80, 60, 40, 24, 12])
def test_the_live_line_always_fits(columns):
    for counts in ((3, 40), (1234, 10000), None):
        for phase in ExecutionPhase:
            text = Progress.fit(phase, 1234.0, counts, columns)
            assert len(text) <= max(columns - 1, 10), (columns, text)
    assert Progress.fit(ExecutionPhase.PARALLEL_EXECUTION, 5, (1, 4), 80) == \
        "[DispatchRunner] Phase 4 [#####---------------] 1/4 tasks (25%), 5s"


# ------------------------------------------------------------------ trace
def test_trace_events_are_ordered_and_carry_workers():
    state = sample_state()
    state.selected_phases = [0, 1, 2, 3, 4]
    state.run_config.trace_dir = "traces"
    events = trace_events(state)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end" and events[-1]["status"] == "failed"
    assert kinds.count("phase_start") == kinds.count("phase_end") == 5
    assert kinds.count("task_start") == kinds.count("task_end") == 9 and kinds.count("task_skipped") == 2
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    flaky = next(e for e in events if e["event"] == "task_end" and e["task_id"] == "flaky-migration")
    assert flaky["worker"] == "celery@gamma" and flaky["success"] is False and "exited 3" in flaky["error"]
    assert [p.name for p in trace_paths(state)] == ["run-7f3a.state.json", "run-7f3a.trace.jsonl"]
    state.selected_phases = [4]  # phases of a loaded state ran in another run: not traced here
    assert {e["phase"] for e in trace_events(state) if e["event"] == "phase_start"} == {4}
