"""Coding-agent presets: the real CLIs editing a real git repository, driven by a
scripted model server on loopback, plus fast checks of options and parsing.

The CLIs live outside dispatch's venv (``scripts/test.sh`` installs them):
``.venv-agents`` (aider-chat, mini-swe-agent) and ``.agents-npm`` (Claude Code,
Codex).  A test whose CLI is missing is skipped with the reason.  Each end-to-end
test runs with a private HOME, proxies pointed at a closed port (a client that
tried to reach the internet would fail loudly) and checks that the server got
every model request the CLI made.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coding_model_server import CodingModelServer, Step, ToolCall
from dispatch.agents import AgentInvocation, build_agent, run_agent
from dispatch.agents.coding.aider import _answer
from dispatch.agents.coding.gemini import GeminiAgent
from dispatch.agents.coding.opencode import OpenCodeAgent
from dispatch.agents.process import Captured, ProcessResult
from dispatch.config import ComponentConfig
from dispatch.errors import ConfigError
from dispatch.models import TaskSpec
from dispatch.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
TOOLS = {
    "claude": ROOT / ".agents-npm" / "node_modules" / ".bin" / "claude",
    "codex": ROOT / ".agents-npm" / "node_modules" / ".bin" / "codex",
    "aider": ROOT / ".venv-agents" / "bin" / "aider",
    "mini": ROOT / ".venv-agents" / "bin" / "mini",
}
CALC = "def add(a, b):\n    return a + b\n"
PROXY_VARS = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "NO_PROXY",
              "no_proxy"]


def tool(name: str) -> str:
    path = TOOLS[name]
    if not os.access(path, os.X_OK):
        pytest.skip(f"{name} CLI not installed at {path}: run scripts/test.sh, which installs the coding-agent "
                    f"CLIs (.venv-agents: aider-chat mini-swe-agent; .agents-npm: @openai/codex "
                    f"@anthropic-ai/claude-code)")
    return str(path)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test User")
    git(path, "config", "user.email", "test@example.com")
    (path / "calc.py").write_text(CALC)
    git(path, "add", "calc.py")
    git(path, "commit", "-qm", "initial")
    return path


@pytest.fixture
def offline(tmp_path: Path, monkeypatch) -> Path:
    """A private HOME and proxies on a closed port, loopback exempt."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    dead = f"http://127.0.0.1:{free_port()}"
    for name in PROXY_VARS[:6]:
        monkeypatch.setenv(name, dead)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("SCRIPTED_KEY", "sk-test-not-a-secret")
    return home


def invoke(workspace: Path, description: str, timeout_s: float = 180.0) -> AgentInvocation:
    task = TaskSpec(task_id="t1", agent="coder", description=description)
    return AgentInvocation(task=task, context=None, dependency_outputs={}, user_prompt="improve calc.py",
                           workspace_path=str(workspace), run_id="run-1", attempt=1, timeout_s=timeout_s)


def make(kind: str, **options):
    return build_agent("coder", ComponentConfig(kind=kind, **options))


def registry_file(path: Path, *models: str) -> str:
    """A litellm model registry: context sizes and prices, so nothing is fetched and cost is reported."""
    path.write_text(json.dumps({m: {"max_input_tokens": 100000, "max_output_tokens": 4096, "mode": "chat",
                                    "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6,
                                    "litellm_provider": "openai"} for m in models}))
    return str(path)


def assert_all_served(server: CodingModelServer) -> None:
    assert server.requests, "the CLI never called the model server"
    for request in server.requests:
        assert request.path.startswith("/v1/"), f"unexpected request {request.method} {request.path}"


# ----------------------------------------------------------------------------- real CLIs
@pytest.mark.slow
def test_claude_code_edits_the_checkout(repo: Path, offline: Path) -> None:
    claude = tool("claude")
    with CodingModelServer() as server:
        server.script("scripted-main",
                      Step(text="Reading calc.py.", calls=[ToolCall("Read", {"file_path": str(repo / "calc.py")})],
                           usage=(150, 20)),
                      Step(text="I'll add mul.", calls=[ToolCall("Edit", {
                          "file_path": str(repo / "calc.py"), "old_string": "    return a + b\n",
                          "new_string": "    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"})],
                           usage=(200, 40)),
                      Step(text="Added mul() to calc.py.", usage=(260, 12)))
        agent = make("claude_code", executable=claude, model="scripted-main", max_turns=5,
                     allowed_tools=["Read", "Write", "Edit"], base_url=server.url, api_key_env="SCRIPTED_KEY",
                     env_pass=PROXY_VARS, env={"ANTHROPIC_DEFAULT_HAIKU_MODEL": "scripted-small"})
        outcome = run_agent(agent, invoke(repo, "Add a mul function to calc.py"))
        assert_all_served(server)
        main = server.requests_for("scripted-main")
    assert outcome.success, outcome.error
    out = outcome.output
    assert out["final_message"] == "Added mul() to calc.py."
    assert out["turns"] == 3
    assert (out["tokens_in"], out["tokens_out"]) == (610, 72)
    assert out["details"]["permission_denials"] == []
    assert out["cost_usd"] is not None and out["cost_usd"] > 0
    assert out["session_id"]
    assert "def mul(a, b)" in (repo / "calc.py").read_text()
    assert "calc.py" in git(repo, "status", "--porcelain")
    # streaming Messages with the key we named, never a key in the config
    assert all(r.body.get("stream") for r in main)
    assert main[0].headers.get("x-api-key") == "sk-test-not-a-secret"
    results = [block for block in main[-1].body["messages"][-1]["content"] if block.get("type") == "tool_result"]
    assert results and not any(block.get("is_error") for block in results)
    assert "<prompt>" not in out["command"] and "sk-test-not-a-secret" not in json.dumps(out)


@pytest.mark.slow
def test_codex_edits_the_checkout(repo: Path, offline: Path) -> None:
    codex = tool("codex")
    with CodingModelServer() as server:
        server.script("scripted-main",
                      Step(text="Appending sub.", calls=[ToolCall("exec_command", {
                          "cmd": "printf '\\n\\ndef sub(a, b):\\n    return a - b\\n' >> calc.py"})], usage=(300, 20)),
                      Step(text="Added sub() to calc.py.", usage=(350, 10)))
        agent = make("codex", executable=codex, model="scripted-main", base_url=server.url + "/v1",
                     api_key_env="SCRIPTED_KEY", env_pass=PROXY_VARS + ["CODEX_HOME"])
        outcome = run_agent(agent, invoke(repo, "Add a sub function to calc.py"))
        assert_all_served(server)
        calls = server.requests_for("scripted-main")
    assert outcome.success, outcome.error
    out = outcome.output
    assert out["final_message"] == "Added sub() to calc.py."
    assert out["turns"] == 1
    assert (out["tokens_in"], out["tokens_out"]) == (650, 30)
    assert out["cost_usd"] is None  # codex reports none
    assert out["session_id"]
    assert [c["exit_code"] for c in out["details"]["commands"]] == [0]
    assert "def sub(a, b)" in (repo / "calc.py").read_text()
    assert len(calls) == 2 and all(c.path == "/v1/responses" and c.body.get("stream") for c in calls)
    assert calls[0].headers.get("authorization") == "Bearer sk-test-not-a-secret"


@pytest.mark.slow
def test_aider_edits_and_commits(repo: Path, offline: Path, tmp_path: Path) -> None:
    aider = tool("aider")
    edit = textwrap.dedent("""\
        I will add a division function.

        calc.py
        ```python
        <<<<<<< SEARCH
        def add(a, b):
            return a + b
        =======
        def add(a, b):
            return a + b


        def div(a, b):
            return a / b
        >>>>>>> REPLACE
        ```
        """)
    head_before = git(repo, "rev-parse", "HEAD").strip()
    with CodingModelServer() as server:
        server.script("scripted-main", Step(text=edit, usage=(500, 60)))
        server.script("scripted-weak", Step(text="feat: add div to calc", usage=(90, 8)))
        metadata = registry_file(tmp_path / "models.json", "openai/scripted-main", "openai/scripted-weak")
        agent = make("aider", executable=aider, model="openai/scripted-main", weak_model="openai/scripted-weak",
                     edit_format="diff", files=["calc.py"], model_metadata_file=metadata,
                     base_url=server.url + "/v1", api_key_env="SCRIPTED_KEY", env_pass=PROXY_VARS)
        outcome = run_agent(agent, invoke(repo, "Add a div function to calc.py"))
        assert_all_served(server)
        main = server.requests_for("openai/scripted-main") or server.requests_for("scripted-main")
    assert outcome.success, outcome.error
    out = outcome.output
    assert "I will add a division function." in out["final_message"]
    assert out["turns"] == 1
    assert out["tokens_in"] > 0 and out["tokens_out"] > 0
    assert out["cost_usd"] is not None and out["cost_usd"] > 0
    assert "def div(a, b)" in (repo / "calc.py").read_text()
    # aider committed by itself; its caches did not end up in the checkout
    log = git(repo, "log", "--format=%s", f"{head_before}..HEAD").splitlines()
    assert log == ["feat: add div to calc"]
    assert [c["message"] for c in out["details"]["commits"]] == ["feat: add div to calc"]
    assert git(repo, "status", "--porcelain", "--ignored") == ""
    assert main and main[0].body.get("stream")


@pytest.mark.slow
def test_mini_swe_agent_edits_the_checkout(repo: Path, offline: Path, tmp_path: Path) -> None:
    mini = tool("mini")
    with CodingModelServer() as server:
        server.script("scripted-main",
                      Step(text="Appending pow.", calls=[ToolCall("bash", {
                          "command": "printf '\\n\\ndef power(a, b):\\n    return a ** b\\n' >> calc.py"})]),
                      Step(text="Done; submitting.", calls=[ToolCall("bash", {
                          "command": "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"})]))
        agent = make("mini_swe_agent", executable=mini, model="openai/scripted-main", max_turns=10,
                     model_registry=registry_file(tmp_path / "registry.json", "openai/scripted-main"),
                     base_url=server.url + "/v1", api_key_env="SCRIPTED_KEY", env_pass=PROXY_VARS)
        outcome = run_agent(agent, invoke(repo, "Add a power function to calc.py"))
        assert_all_served(server)
    assert outcome.success, outcome.error
    out = outcome.output
    assert out["final_message"] == "Done; submitting."
    assert out["turns"] == 2
    assert (out["tokens_in"], out["tokens_out"]) == (240, 60)
    assert out["cost_usd"] == pytest.approx(2 * (120 * 1e-6 + 30 * 2e-6))
    assert out["details"]["exit_status"] == "Submitted"
    assert "def power(a, b)" in (repo / "calc.py").read_text()


@pytest.mark.slow
def test_real_cli_model_error_fails_the_task(repo: Path, offline: Path) -> None:
    """A model endpoint that refuses connections: the task fails with the CLI's reason, nothing is edited."""
    claude = tool("claude")
    agent = make("claude_code", executable=claude, model="scripted-none", max_turns=1,
                 base_url=f"http://127.0.0.1:{free_port()}", api_key_env="SCRIPTED_KEY", env_pass=PROXY_VARS,
                 env={"CLAUDE_CODE_MAX_RETRIES": "0"}, timeout_s=90)
    outcome = run_agent(agent, invoke(repo, "Add mul"))
    assert not outcome.success and outcome.transient  # unreachable: worth a retry
    assert "Unable to connect" in outcome.error and outcome.output["exit_code"] == 1
    assert (repo / "calc.py").read_text() == CALC


# ----------------------------------------------------------------------------- fast: options
@pytest.mark.parametrize("kind,options,message", [
    ("claude_code", {"env": {"ANTHROPIC_API_KEY": "sk-live"}}, "looks like a secret"),
    ("claude_code", {"env_pass": ["KEY=value"]}, "not a variable name"),
    ("claude_code", {"api_key_env": "sk-ant-123/xyz"}, "NAME of a variable"),
    ("claude_code", {"max_turns": 0}, "max_turns"),
    ("claude_code", {"comand": "x"}, "comand"),
    ("codex", {"max_turns": 3}, "no turn limit"),
    ("codex", {"sandbox": "open"}, "sandbox"),
    ("aider", {"files": ["../outside.py"]}, "relative to the checkout"),
    ("aider", {"allowed_tools": ["Bash"]}, "no tools"),
    ("gemini", {"max_turns": 3}, "maxSessionTurns"),
    ("opencode", {"base_url": "http://x"}, "opencode.json"),
    ("mini_swe_agent", {"allowed_tools": ["x"]}, "single bash tool"),
])
def test_bad_options_are_config_errors(kind: str, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make(kind, **options)


def test_settings_that_are_not_secrets_may_be_inline() -> None:
    agent = make("claude_code", env={"CLAUDE_CODE_MAX_OUTPUT_TOKENS": "8000", "ANTHROPIC_DEFAULT_HAIKU_MODEL": "h"})
    assert agent.options.env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "8000"
    for name in ("GITHUB_TOKEN", "OPENAI_API_KEY", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY"):
        with pytest.raises(ConfigError, match="looks like a secret"):
            make("codex", env={name: "x"})


def test_missing_cli_and_missing_key_fail_clearly(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    outcome = run_agent(make("codex", executable=str(tmp_path / "nope")), invoke(tmp_path, "x", 5))
    assert not outcome.success and "command not found" in outcome.error
    outcome = run_agent(make("claude_code", api_key_env="NO_SUCH_KEY_VAR"), invoke(tmp_path, "x", 5))
    assert not outcome.success and "NO_SUCH_KEY_VAR" in outcome.error and "not set" in outcome.error


# ----------------------------------------------------------------------------- fast: a stand-in CLI
def fake_cli(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-cli"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def test_environment_is_an_allow_list_with_quiet_switches(tmp_path: Path, monkeypatch) -> None:
    """The stand-in prints its argv, stdin and environment in Claude Code's result shape."""
    monkeypatch.setenv("WORKER_SECRET", "do-not-leak")
    monkeypatch.setenv("PASSED_ON", "yes")
    monkeypatch.setenv("SCRIPTED_KEY", "k-123")
    cli = fake_cli(tmp_path, """
        import json, os, sys
        prompt = sys.stdin.read()
        print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "num_turns": 1,
                          "result": json.dumps({"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd(),
                                                "prompt": prompt}),
                          "session_id": "s-1", "usage": {"input_tokens": 5, "output_tokens": 2}}))
        """)
    agent = make("claude_code", executable=cli, allowed_tools=["Read", "Edit"], max_turns=3,
                 api_key_env="SCRIPTED_KEY", env_pass=["PASSED_*"], extra_args=["--verbose"])
    outcome = run_agent(agent, invoke(tmp_path, "Add mul", 30))
    assert outcome.success, outcome.error
    seen = json.loads(outcome.output["final_message"])
    assert seen["argv"] == ["-p", "--output-format", "json", "--permission-mode", "acceptEdits", "--max-turns", "3",
                            "--allowedTools", "Read,Edit", "--verbose"]
    assert "Add mul" in seen["prompt"] and seen["cwd"] == str(tmp_path)
    env = seen["env"]
    assert "WORKER_SECRET" not in env and env["PASSED_ON"] == "yes" and env["ANTHROPIC_API_KEY"] == "k-123"
    assert env["DISABLE_TELEMETRY"] == "1" and env["DISABLE_AUTOUPDATER"] == "1"
    assert env["DISPATCH_TASK_ID"] == "t1"
    assert "k-123" not in json.dumps(outcome.output["command"])


def test_timeout_and_error_result(tmp_path: Path) -> None:
    sleeper = fake_cli(tmp_path, "import time\ntime.sleep(30)\n")
    outcome = run_agent(make("claude_code", executable=sleeper, kill_grace_s=0.5), invoke(tmp_path, "x", 1.0))
    assert not outcome.success and "timed out after 1s" in outcome.error and outcome.output["timed_out"]
    failing = fake_cli(tmp_path, """
        import json
        print(json.dumps({"type": "result", "subtype": "error_max_turns", "is_error": True, "num_turns": 3,
                          "session_id": "s", "api_error_status": None}))
        """)
    outcome = run_agent(make("claude_code", executable=failing), invoke(tmp_path, "x", 30))
    assert not outcome.success and "error_max_turns" in outcome.error and not outcome.transient
    overloaded = fake_cli(tmp_path, """
        import json, sys
        print(json.dumps({"type": "result", "subtype": "success", "is_error": True, "result": "Overloaded",
                          "api_error_status": 529}))
        sys.exit(1)
        """)
    outcome = run_agent(make("claude_code", executable=overloaded), invoke(tmp_path, "x", 30))
    assert not outcome.success and outcome.transient and "Overloaded" in outcome.error


# ----------------------------------------------------------------------------- fast: documented output
def result_of(stdout: str) -> ProcessResult:
    return ProcessResult(0, Captured(stdout, len(stdout), False), Captured("", 0, False), False, 10.0)


def test_gemini_json_output_is_read() -> None:
    agent = make("gemini", model="gemini-2.5-pro")
    assert isinstance(agent, GeminiAgent)
    document = {"session_id": "g-1", "response": "Added mul.", "stats": {
        "models": {"gemini-2.5-pro": {"api": {"totalRequests": 3, "totalErrors": 0},
                                      "tokens": {"prompt": 900, "candidates": 80, "total": 980}},
                   "gemini-2.5-flash": {"api": {"totalRequests": 1}, "tokens": {"prompt": 100, "candidates": 5}}},
        "tools": {"totalCalls": 2}}}
    parsed = agent.parse(result_of(json.dumps(document, indent=2)), "")
    assert (parsed.success, parsed.final_message, parsed.turns) == (True, "Added mul.", 4)
    assert (parsed.tokens_in, parsed.tokens_out, parsed.session_id) == (1000, 85, "g-1")
    failed = agent.parse(result_of(json.dumps({"error": {"type": "ApiError", "message": "quota", "code": 429}})), "")
    assert not failed.success and failed.transient and "quota" in failed.error
    launch = agent.launch(invoke(Path("."), "x"), "the prompt", "")
    assert launch.argv[:5] == ["gemini", "--output-format", "json", "--approval-mode", "auto_edit"]
    assert launch.stdin == b"the prompt"


def test_opencode_json_events_are_read() -> None:
    agent = make("opencode", model="anthropic/claude-sonnet-4-5")
    assert isinstance(agent, OpenCodeAgent)
    events = [
        {"type": "step_start", "sessionID": "ses_1", "part": {"type": "step-start"}},
        {"type": "tool_use", "sessionID": "ses_1", "part": {"type": "tool", "tool": "edit"}},
        {"type": "step_finish", "sessionID": "ses_1", "part": {
            "type": "step-finish", "cost": 0.01,
            "tokens": {"input": 100, "output": 20, "reasoning": 5, "cache": {"read": 50, "write": 0}}}},
        {"type": "text", "sessionID": "ses_1", "part": {"type": "text", "text": "Added mul.\n"}},
        {"type": "step_finish", "sessionID": "ses_1", "part": {"tokens": {"input": 10, "output": 3}, "cost": 0.002}},
    ]
    parsed = agent.parse(result_of("\n".join(json.dumps(e) for e in events)), "")
    assert (parsed.success, parsed.final_message, parsed.turns, parsed.session_id) == (True, "Added mul.", 2, "ses_1")
    assert (parsed.tokens_in, parsed.tokens_out) == (160, 28)
    assert parsed.cost_usd == pytest.approx(0.012)
    assert parsed.details["tools"] == ["edit"]
    launch = agent.launch(invoke(Path("."), "x"), "the prompt", "")
    assert launch.argv == ["opencode", "run", "--format", "json", "-m", "anthropic/claude-sonnet-4-5", "--auto",
                           "--", "the prompt"]


def test_aider_answer_drops_its_status_lines() -> None:
    stdout = ("Aider v0.86.2\nMain model: openai/x with diff edit format\nGit repo: .git with 1 files\n"
              "Added calc.py to the chat.\n\nI will add div.\n\nTokens: 2.5k sent, 58 received.\n"
              "Applied edit to calc.py\nCommit ef87e9a feat: add div\n")
    assert _answer(stdout) == "I will add div."
