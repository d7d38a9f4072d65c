"""echo, sleep and python agents; agent resolution; run_agent's guarantees; the prompt."""
from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest

from dispatch.agents import (AGENTS, BUILTIN_AGENT_NAMES, Agent, AgentInvocation, AgentOutcome, build_prompt,
                             make_agent, resolve_agent, run_agent)
from dispatch.config import ComponentConfig, DispatchConfig
from dispatch.errors import ConfigError
from dispatch.models import ContextItem, TaskContext, TaskSpec


def config(**agents) -> DispatchConfig:
    return DispatchConfig.model_validate({"agents": agents})


def invoke(task_id="t1", agent="echo", description="describe", input_data=None, context=None, deps=None,
           timeout_s=30.0, **extra) -> AgentInvocation:
    task = TaskSpec(task_id=task_id, agent=agent, description=description, input_data=input_data or {}, **extra)
    return AgentInvocation(task=task, context=context, dependency_outputs=deps or {}, user_prompt="build it",
                           workspace_path=".", run_id="r1", attempt=1, timeout_s=timeout_s)


def ctx(*items: tuple[str, str]) -> TaskContext:
    return TaskContext(task_id="t1", items=[ContextItem(id=f"c{i}", source=s, content=c)
                                            for i, (s, c) in enumerate(items)])


# ------------------------------------------------------------- resolution
def test_builtins_need_no_configuration():
    assert BUILTIN_AGENT_NAMES == {"echo", "sleep"}
    assert resolve_agent("echo", DispatchConfig()) == ComponentConfig(kind="echo")
    assert make_agent("sleep", DispatchConfig()).kind == "sleep"
    assert set(AGENTS.kinds()) >= {"echo", "sleep", "shell", "python", "llm"}


def test_configured_names_map_to_their_entries_and_win_over_builtins():
    cfg = config(coder={"kind": "shell", "command": ["true"]}, echo={"kind": "echo", "fail": True})
    assert resolve_agent("coder", cfg).kind == "shell"
    assert resolve_agent("coder", cfg).options == {"command": ["true"]}
    assert make_agent("echo", cfg).options.fail is True


def test_unknown_agent_lists_the_known_names():
    cfg = config(b_agent={"kind": "echo"}, a_agent={"kind": "sleep"})
    with pytest.raises(ConfigError) as err:
        resolve_agent("nope", cfg)
    message = str(err.value)
    assert message.startswith("unknown agent 'nope' (known: a_agent, b_agent, echo, sleep). ")
    assert "--config FILE or DISPATCH_CONFIG" in message and "[agents.nope]" in message
    with pytest.raises(ConfigError, match="unknown agent 'shell'"):
        resolve_agent("shell", DispatchConfig())  # a kind, but one that needs configuration


def test_unknown_kind_and_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match=r"agent 'x': unknown agent kind 'telepathy' \(known: aider, claude_code, codex, echo, gemini, llm"):
        make_agent("x", config(x={"kind": "telepathy"}))
    with pytest.raises(ConfigError, match=r"agent 'e' \(echo\): fial"):
        make_agent("e", config(e={"kind": "echo", "fial": True}))
    with pytest.raises(ConfigError, match=r"timeout_s"):
        make_agent("e", config(e={"kind": "echo", "timeout_s": -1}))
    assert make_agent("e", config(e={"kind": "sleep", "timeout_s": 5})).options.timeout_s == 5


# ------------------------------------------------------------------ echo
def test_echo_returns_what_it_was_given():
    inv = invoke(input_data={"node_type": "Effect"}, context=ctx(("a.py", "x"), ("b.py", "y")),
                 deps={"up2": "text", "up1": {"value": 1}})
    outcome = run_agent(make_agent("echo", DispatchConfig()), inv)
    assert outcome.success and outcome.error is None
    assert outcome.output == {"task_id": "t1", "agent": "echo", "description": "describe",
                              "input_data": {"node_type": "Effect"}, "context_items": 2,
                              "dependencies": ["up1", "up2"],
                              "dependency_outputs": {"up1": {"value": 1}, "up2": "text"}}


def test_echo_chains_stay_flat():
    echo = make_agent("echo", DispatchConfig())
    previous = None
    for index in range(50):
        deps = {f"t{index - 1}": previous} if previous is not None else {}
        previous = run_agent(echo, invoke(task_id=f"t{index}", deps=deps)).output
    assert len(json.dumps(previous)) < 600
    assert previous["dependency_outputs"]["t48"]["dependencies"] == ["t47"]


def test_echo_fails_on_request():
    echo = make_agent("echo", DispatchConfig())
    failed = run_agent(echo, invoke(input_data={"fail": True}))
    assert not failed.success and not failed.transient
    assert failed.error == "echo failed on request (input_data.fail)"
    assert failed.output["task_id"] == "t1"
    assert run_agent(echo, invoke(input_data={"fail": "disk full"})).error == "disk full"
    always = make_agent("bad", config(bad={"kind": "echo", "fail": True}))
    assert run_agent(always, invoke(agent="bad")).error == "echo failed on request (agent 'bad' option fail)"


# ----------------------------------------------------------------- sleep
def test_sleep_waits_and_succeeds():
    sleep = make_agent("sleep", DispatchConfig())
    started = time.monotonic()
    outcome = run_agent(sleep, invoke(agent="sleep", input_data={"duration_ms": 120}))
    assert outcome.success and outcome.output == {"task_id": "t1", "duration_ms": 120.0}
    assert time.monotonic() - started >= 0.12
    assert run_agent(sleep, invoke(agent="sleep", input_data={"seconds": 0.05})).output["duration_ms"] == 50.0
    assert run_agent(sleep, invoke(agent="sleep")).output["duration_ms"] == 0.0


def test_sleep_default_bad_duration_and_time_limit():
    default = make_agent("s", config(s={"kind": "sleep", "duration_ms": 10}))
    assert run_agent(default, invoke(agent="s")).output["duration_ms"] == 10.0
    sleep = make_agent("sleep", DispatchConfig())
    bad = run_agent(sleep, invoke(agent="sleep", input_data={"duration_ms": "soon"}))
    assert not bad.success and "duration_ms must be a non-negative number" in bad.error
    started = time.monotonic()
    late = run_agent(sleep, invoke(agent="sleep", input_data={"seconds": 60}, timeout_s=0.1))
    assert not late.success and late.error == "timed out after 0.1s" and time.monotonic() - started < 1


# ---------------------------------------------------------------- python
@pytest.fixture
def module(tmp_path, monkeypatch):
    (tmp_path / "inhouse_agents.py").write_text(textwrap.dedent("""\
        from dispatch.agents import AgentOutcome

        def summarize(task, context, deps):
            return {"id": task["task_id"], "extra": task.get("priority"),
                    "sources": [i["source"] for i in (context or {}).get("items", [])],
                    "deps": sorted(deps)}

        def explode(task, context, deps):
            raise RuntimeError("model melted")

        class Busy(Exception):
            transient = True

        def busy(task, context, deps):
            raise Busy("rate limited")

        def exits(task, context, deps):
            raise SystemExit(3)

        def unserializable(task, context, deps):
            return {"when": object()}

        def custom(task, context, deps):
            return AgentOutcome(success=False, output={"partial": 1}, error="half done")

        class Tools:
            @staticmethod
            def run(task, context, deps):
                return "static"

        NOT_CALLABLE = 3
        """))
    (tmp_path / "broken_agents.py").write_text("raise ImportError('needs numpy')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "inhouse_agents"
    sys.modules.pop("inhouse_agents", None)


def python_agent(path: str) -> Agent:
    return make_agent("py", config(py={"kind": "python", "callable": path}))


def test_python_agent_calls_the_function_with_json_dicts(module):
    inv = invoke(agent="py", context=ctx(("src/db.py", "code")), deps={"a": 1}, priority="high")
    outcome = run_agent(python_agent(f"{module}:summarize"), inv)
    assert outcome.success
    assert outcome.output == {"id": "t1", "extra": "high", "sources": ["src/db.py"], "deps": ["a"]}
    assert run_agent(python_agent(f"{module}.summarize"), invoke(agent="py")).output["sources"] == []
    assert run_agent(python_agent(f"{module}:Tools.run"), invoke(agent="py")).output == "static"


def test_python_agent_failures_become_outcomes(module):
    raised = run_agent(python_agent(f"{module}:explode"), invoke(agent="py"))
    assert not raised.success and raised.error == "RuntimeError: model melted" and not raised.transient
    busy = run_agent(python_agent(f"{module}:busy"), invoke(agent="py"))
    assert not busy.success and busy.transient
    exited = run_agent(python_agent(f"{module}:exits"), invoke(agent="py"))
    assert not exited.success and exited.error == "SystemExit: 3"
    bad_output = run_agent(python_agent(f"{module}:unserializable"), invoke(agent="py"))
    assert not bad_output.success and "not JSON-serializable" in bad_output.error
    custom = run_agent(python_agent(f"{module}:custom"), invoke(agent="py"))
    assert (custom.success, custom.output, custom.error) == (False, {"partial": 1}, "half done")


@pytest.mark.parametrize("path, message", [
    ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
    ("inhouse_agents:missing", "has no attribute 'missing'"),
    ("inhouse_agents:NOT_CALLABLE", "int is not callable"),
    ("broken_agents:fn", "cannot import module 'broken_agents' (needs numpy)"),
    ("justaname", "expected 'package.module:function'"),
])
def test_python_agent_bad_paths_are_config_errors(module, path, message):
    with pytest.raises(ConfigError) as err:
        python_agent(path)
    assert message in str(err.value) and "agent 'py' (python)" in str(err.value)


# ------------------------------------------------------------- run_agent
class Raising(Agent):
    def run(self, inv):
        raise ValueError("bug in agent")


class WrongReturn(Agent):
    def run(self, inv):
        return {"success": True}


class SilentFailure(Agent):
    def run(self, inv):
        return AgentOutcome(success=False, error="x" * 10_000)


def test_run_agent_never_loses_a_result():
    component = ComponentConfig(kind="test")
    outcome = run_agent(Raising("r", component), invoke())
    assert (outcome.success, outcome.error) == (False, "ValueError: bug in agent")
    assert "not an AgentOutcome" in run_agent(WrongReturn("w", component), invoke()).error
    clipped = run_agent(SilentFailure("s", component), invoke()).error
    assert len(clipped) < 4100 and clipped.endswith("more chars]")


# ---------------------------------------------------------------- prompt
def test_build_prompt_has_every_section_in_order():
    task = TaskSpec(task_id="gen-db", agent="coder", description="Generate the DB writer",
                    input_data={"node_type": "Effect"}, owner="team-a")
    context = ctx(("src/db.py", "def write(): pass"), ("docs/onex.md", "Effect nodes ```do``` IO"))
    prompt = build_prompt(task, context, {"schema": {"tables": ["users"]}, "notes": "use upserts"}, "Make two nodes")
    order = ["# Request", "Make two nodes", "# Task: gen-db", "Generate the DB writer", "## Input data",
             '"node_type": "Effect"', "## Additional task fields", '"owner": "team-a"', "## Context (2 items)",
             "### [1] src/db.py", "def write(): pass", "### [2] docs/onex.md", "## Outputs of dependencies",
             "### notes", "use upserts", "### schema", '"users"']
    positions = [prompt.index(part) for part in order]
    assert positions == sorted(positions)
    assert "````\nEffect nodes ```do``` IO\n````" in prompt  # fence longer than the content's backticks
    assert build_prompt(task, context, {"schema": {"tables": ["users"]}, "notes": "use upserts"},
                        "Make two nodes") == prompt


def test_build_prompt_leaves_out_empty_sections():
    prompt = build_prompt(TaskSpec(task_id="t", agent="echo", description="just this"), None, {}, "")
    assert prompt == "# Task: t\n\njust this\n"
    assert "## Context" not in build_prompt(TaskSpec(task_id="t", agent="echo", description="d"),
                                            TaskContext(task_id="t"), {}, "req")


def test_build_prompt_truncates_large_dependency_outputs_keeping_head_and_tail():
    huge = "HEAD" + "x" * 200_000 + "TAIL"
    prompt = build_prompt(TaskSpec(task_id="t", agent="echo", description="d"), None,
                          {"big": huge, "small": "tiny"}, "")
    assert len(prompt) < 20_000
    assert "HEAD" in prompt and "TAIL" in prompt and "chars truncated" in prompt and "tiny" in prompt


def test_invocation_builds_its_prompt_when_not_given():
    inv = invoke(description="the task text", deps={"up": "result of up"})
    assert "the task text" in inv.prompt and "result of up" in inv.prompt and "build it" in inv.prompt
    given = AgentInvocation(task=inv.task, context=None, dependency_outputs={}, user_prompt="",
                            workspace_path=".", run_id="r", attempt=1, timeout_s=1, prompt="custom")
    assert given.prompt == "custom"


def test_agents_package_imports_no_celery():
    import subprocess
    code = "import sys, dispatch.agents; print('celery' in sys.modules or any(m.startswith('celery.') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_build_prompt_shows_the_substance_of_known_agent_outputs():
    shell_out = {"exit_code": 0, "stdout": "line one\nline two\n", "stderr": "noise", "stdout_truncated": False,
                 "stderr_truncated": False, "files": [{"path": "out/a.py", "size": 9, "content": "print(1)\n"},
                                                      {"path": "out/b.bin", "size": 4, "content": None}],
                 "duration_ms": 3.0}
    parsed = {**shell_out, "json": {"count": 3}}
    llm_out = {"text": "The answer is 42.", "model": "m", "provider": "openai", "usage": {}}
    prompt = build_prompt(TaskSpec(task_id="t", agent="echo", description="d"), None,
                          {"sh": shell_out, "parsed": parsed, "llm": llm_out, "other": {"exit": 1}}, "")
    assert "line one\nline two\n--- out/a.py (9 bytes)\nprint(1)\n--- out/b.bin (4 bytes)" in prompt
    assert "noise" not in prompt and "exit_code" not in prompt
    assert '"count": 3' in prompt and "The answer is 42." in prompt and '"exit": 1' in prompt
