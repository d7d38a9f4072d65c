"""Issue 14, security and hangs: inline secrets in every config position, ``${NAME}`` references resolved on
the worker only, redaction of what is written, paths contained, workspaces allowed per worker, kernel file
systems never read, file names that are not UTF-8."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from dispatch.agents.base import AgentInvocation, run_agent
from dispatch.agents.shell import ShellAgent
from dispatch.config import (ComponentConfig, DispatchConfig, find_inline_secret, redact_secrets, redact_text,
                             workspace_root_check)
from dispatch.context.errors import ContextGatheringError
from dispatch.context.files import WorkspaceFiles
from dispatch.context.hostfs import allowed_workspace, read_regular
from dispatch.context.walk import iter_files
from dispatch.errors import ConfigError
from dispatch.models import TaskSpec

SECRET = "s3cr3t-Value-9f8e7d6c5b4a"
PY = sys.executable
SH = {"kind": "shell", "command": [PY, "-c", "print(1)"]}

# every place a credential can hide in a config, each with the path the refusal must name
INLINE = [
    ({"agents": {"a": {**SH, "env": {"GH_TOKEN": SECRET}}}}, "agents.a.env.GH_TOKEN"),
    ({"agents": {"a": {**SH, "env": {"DB_PASSWORD": SECRET}}}}, "agents.a.env.DB_PASSWORD"),
    ({"agents": {"a": {**SH, "command": ["tool", f"--api-key={SECRET}"]}}}, "agents.a.command[1]"),
    ({"agents": {"a": {**SH, "command": ["tool", f"--github-token={SECRET}"]}}}, "agents.a.command[1]"),
    ({"agents": {"a": {**SH, "command": ["sh", "-c", f"curl -H 'Authorization: Bearer {SECRET}' x"]}}},
     "agents.a.command[2]"),
    ({"agents": {"w": {"kind": "llm", "model": "m", "headers": {"Authorization": f"Bearer {SECRET}"}}}},
     "agents.w.headers.Authorization"),
    ({"agents": {"w": {"kind": "llm", "model": "m", "headers": {"X-Api-Key": SECRET}}}}, "agents.w.headers.X-Api-Key"),
    ({"agents": {"w": {"kind": "llm", "model": "m", "base_url": f"https://me:{SECRET}@llm.internal/v1"}}},
     "agents.w.base_url"),
    ({"agents": {"w": {"kind": "llm", "model": "m", "base_url": f"https://llm.internal/v1?api_key={SECRET}"}}},
     "agents.w.base_url"),
    ({"validators": {"v": {"kind": "openai", "client_secret": SECRET}}}, "validators.v.client_secret"),
    ({"retrievers": {"r": {"kind": "http", "url": "http://x", "headers": {"Cookie": SECRET}}}},
     "retrievers.r.headers.Cookie"),
    ({"agents": {"a": {**SH, "env": {"OPENAI": "sk-proj-abcdefghijklmnopqrstuvwx"}}}}, "agents.a.env.OPENAI"),
]


@pytest.mark.parametrize("raw, path", INLINE, ids=[p for _, p in INLINE])
def test_a_literal_credential_is_refused_wherever_it_is(tmp_path, raw, path):
    config = tmp_path / "dispatch.json"
    config.write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as info:
        DispatchConfig.load(str(config))
    message = str(info.value)
    assert path in message and "${NAME}" in message
    assert SECRET not in message and "abcdefghijklmnop" not in message


def test_references_and_ordinary_values_pass():
    options = {"env": {"GH_TOKEN": "${GH_TOKEN}", "MODE": "batch", "API_KEY_FILE": "/run/key", "EMPTY_TOKEN": ""},
               "command": ["tool", "--api-key=${OPENAI_API_KEY}", "--idempotency-key={run_id}:{task_id}",
                           "--sort-key", "name"],
               "headers": {"Authorization": "Bearer ${OPENAI_API_KEY}", "X-Trace": "on"},
               "base_url": "https://${USER_NAME}:${LLM_PASSWORD}@llm.internal/v1?model=x",
               "max_tokens": 100, "api_key_env": "OPENAI_API_KEY"}
    assert find_inline_secret(options, "agents.a") is None
    assert redact_secrets(options) == options  # a config that passed the check is written as it is


def test_redaction_masks_what_the_check_knows_and_keeps_references():
    raw = {"env": {"GH_TOKEN": SECRET, "OK": "${GH_TOKEN}"}, "command": [f"--token={SECRET}", "--token=${T}"],
           "headers": {"Authorization": f"Bearer {SECRET}"}, "base_url": f"https://u:{SECRET}@h/v1?key={SECRET}&m=1"}
    redacted = json.dumps(redact_secrets(raw))
    assert SECRET not in redacted and "${GH_TOKEN}" in redacted and "--token=${T}" in redacted
    assert "https://u:***@h/v1?key=***&m=1" in redacted
    assert SECRET not in redact_text(f"exit 1: curl https://u:{SECRET}@h --api-key={SECRET} -H 'Bearer {SECRET}'")
    # a component written by any path (state, payload, report) goes through it, even if it was never checked
    built = ComponentConfig.model_construct(kind="shell", env={"GH_TOKEN": SECRET})
    assert SECRET not in built.model_dump_json()


@pytest.mark.parametrize("raw, path", [
    ({"agents": {"a": {**SH, "kill_grace_s": 1e999}}}, "agents.a.kill_grace_s"),
    ({"phases": {"retry_backoff_s": float("nan")}}, "phases.retry_backoff_s"),
    ({"context": {"top_k": True}}, "context.top_k"),
    ({"quorum": {"max_retries": "3"}}, "quorum.max_retries"),
    ({"agents": {"a": {**SH, "weight": "2"}}}, "agents.a.weight"),
])
def test_config_numbers_are_strict_and_finite(tmp_path, raw, path):
    config = tmp_path / "dispatch.json"
    config.write_text(json.dumps(raw).replace("Infinity", "1e999"))
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        DispatchConfig.load(str(config))


def test_shell_option_numbers_are_strict_at_planning_time():
    for bad in ({"kill_grace_s": True}, {"max_files": "5"}, {"timeout_s": float("inf")}):
        with pytest.raises(ConfigError):
            ShellAgent("a", ComponentConfig.model_validate({**SH, **bad}))


# --------------------------------------------------------------- the CLI
def test_cli_refuses_inline_secrets_and_never_prints_them(cli, tmp_path):
    for index, (raw, path) in enumerate(INLINE):
        config = tmp_path / f"c{index}.json"
        config.write_text(json.dumps(raw))
        run = cli("--config", str(config), stdin=json.dumps({"tasks": [{"task_id": "t", "agent": "echo",
                                                                         "description": "x"}]}))
        assert run.returncode == 2 and path in run.stderr, (path, run.stderr[-800:])
        assert SECRET not in run.stderr + run.stdout and "Traceback" not in run.stderr


def test_cli_refuses_a_config_number_that_would_fail_every_task(cli, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[agents.a]\nkind = "shell"\ncommand = ["true"]\nkill_grace_s = inf\n')
    run = cli("--config", str(config), stdin=json.dumps({"tasks": [{"task_id": "t", "agent": "a", "description": "x"}]}))
    assert run.returncode == 2 and "agents.a.kill_grace_s" in run.stderr and "Traceback" not in run.stderr


def test_a_reference_is_resolved_on_the_worker_and_written_nowhere(cli, tmp_path):
    # the tool says what it got by digest, so that any copy of the secret found later was written by dispatch
    dump = ("import hashlib, json, os, sys; h = lambda s: hashlib.sha256(s.encode()).hexdigest(); "
            "print(json.dumps({'argv': [h(sys.argv[1]), sys.argv[2]], 'token': h(os.environ['TOOL_TOKEN'])}))")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"agents": {"tool": {
        "kind": "shell", "command": [PY, "-c", dump, "--api-key=${HARDENING_KEY}", "$${HARDENING_KEY}"],
        "env": {"TOOL_TOKEN": "${HARDENING_KEY}"}}}}))
    state = tmp_path / "state.json"
    tasks = {"workspace_path": str(tmp_path), "tasks": [
        {"task_id": "t", "agent": "tool", "description": "${HARDENING_KEY} stays text"}]}
    run = cli("--config", str(config), "--save-phase-state", str(state), stdin=json.dumps(tasks),
              extra_env={"HARDENING_KEY": SECRET})
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.json["results"][0]["output"]["stdout"])
    digest = lambda text: hashlib.sha256(text.encode()).hexdigest()  # noqa: E731
    assert seen == {"argv": [digest(f"--api-key={SECRET}"), "${HARDENING_KEY}"], "token": digest(SECRET)}
    written = state.read_text() + "".join(p.read_text() for p in (tmp_path / "state").rglob("*.json"))
    shown = cli("show", run.json["run_id"])
    assert "${HARDENING_KEY}" in state.read_text()
    assert SECRET not in written + run.stdout + run.stderr + shown.stdout + shown.stderr
    missing = cli("--config", str(config), stdin=json.dumps(tasks))
    assert missing.returncode == 1
    assert "${HARDENING_KEY}: the variable HARDENING_KEY is not set on this worker" in missing.json["results"][0]["error"]


# --------------------------------------------------------------- paths
def shell(ws: Path, cwd: str, input_data: dict):
    agent = ShellAgent("a", ComponentConfig.model_validate(
        {"kind": "shell", "command": [PY, "-c", "import os; print(os.getcwd())"], "cwd": cwd}))
    return run_agent(agent, AgentInvocation(task=TaskSpec(task_id="t", agent="a", description="d",
                                                          input_data=input_data),
                                            context=None, dependency_outputs={}, user_prompt="",
                                            workspace_path=str(ws), run_id="r", attempt=1, timeout_s=30))


@pytest.mark.parametrize("value", ["../../..", "/etc", "sub/../../x", "link"])
def test_task_data_cannot_move_an_agent_out_of_its_workspace(tmp_path, value):
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (tmp_path / "x").mkdir()
    (ws / "link").symlink_to(tmp_path / "x")
    outcome = shell(ws, "{input.dir}", {"dir": value})
    assert not outcome.success and "outside the workspace" in outcome.error
    inside = shell(ws, "{input.dir}", {"dir": "sub"})
    assert inside.success and inside.output["stdout"].strip() == str(ws / "sub")


def test_workspace_roots_default_and_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPATCH_WORKSPACE_ROOTS", raising=False)
    assert workspace_root_check(str(tmp_path)) is None  # under the temporary directory
    assert workspace_root_check(os.getcwd()) is None
    for system in ("/", "/etc", "/proc", "/sys/kernel", "/dev", "/boot"):
        assert workspace_root_check(system) is not None, system
    monkeypatch.setenv("DISPATCH_WORKSPACE_ROOTS", os.pathsep.join([str(tmp_path / "a"), "/"]))
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert workspace_root_check(str(tmp_path / "a" / "b")) is None
    assert "outside the allowed workspace roots" in workspace_root_check(str(tmp_path))
    assert "root of the file system" in workspace_root_check("/")  # listing "/" does not allow it
    (tmp_path / "a" / "etc").symlink_to("/etc")
    assert "system tree /etc" in workspace_root_check(str(tmp_path / "a" / "etc"))


def test_the_root_workspace_reads_nothing(tmp_path):
    files = WorkspaceFiles("/")
    assert files.read("file:etc/passwd") == [] and files.read("/etc/passwd") == []
    assert "root of the file system" in files.refused
    with pytest.raises(ContextGatheringError):
        allowed_workspace("/proc")


@pytest.mark.skipif(not Path("/proc/self/mountinfo").exists(), reason="needs Linux /proc")
def test_kernel_file_systems_are_never_read(tmp_path, monkeypatch):
    monkeypatch.setenv("DISPATCH_WORKSPACE_ROOTS", "/proc")  # even when listed: a system tree
    with pytest.raises(ContextGatheringError, match="system tree /proc"):
        allowed_workspace("/proc")
    assert read_regular("/proc/kmsg", 100) is None  # a "regular file" that blocks: refused by its file system
    assert read_regular("/proc/self/status", 100) is None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_regular(fifo, 100) is None  # opened non-blocking, refused by fstat: no hang
    (tmp_path / "big").write_bytes(b"x" * 5000)
    assert read_regular(tmp_path / "big", 100) == b"x" * 100


def test_cli_proc_workspace_and_kmsg_do_not_hang(cli):
    run = cli("--enable-context", stdin=json.dumps({"workspace_path": "/proc", "tasks": [
        {"task_id": "a", "agent": "echo", "description": "x", "context_requirements": ["file:kmsg"]}]}))
    assert run.returncode == 0 and "system tree /proc" in run.stderr
    rooted = cli("--enable-context", stdin=json.dumps({"workspace_path": "/", "tasks": [
        {"task_id": "a", "agent": "echo", "description": "x", "context_requirements": ["file:etc/passwd"]}]}))
    assert rooted.returncode == 0 and "root:" not in rooted.stdout
    assert rooted.json["results"][0]["output"]["context_items"] == 0


def test_a_file_name_that_is_not_utf8_is_listed_escaped_and_the_state_saves(cli, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / os.fsdecode(b"bad\xffname.py")).write_text("def pool():\n    return 1\n")
    (ws / "ok.py").write_text("def pool():\n    return 2\n")
    assert sorted(e.rel for e in iter_files(ws)) == ["bad\\xffname.py", "ok.py"]
    state = tmp_path / "s.json"
    run = cli("--enable-context", "--save-phase-state", str(state), stdin=json.dumps({
        "workspace_path": str(ws), "rag_queries": ["pool"],
        "tasks": [{"task_id": "a", "agent": "echo", "description": "pool", "context_requirements": ["file:*.py"]}]}))
    assert run.returncode == 0, run.stderr
    assert run.json["status"] == "succeeded" and "bad\\\\xffname.py" in state.read_text()


def test_an_agent_error_that_echoes_a_credential_is_redacted():
    from dispatch.agents.base import Agent, AgentOutcome

    class Echoing(Agent):
        def run(self, inv):
            return AgentOutcome.fail(f"exit code 22: curl https://u:{SECRET}@h/?token={SECRET} --api-key={SECRET}")

    error = run_agent(Echoing("e", ComponentConfig(kind="x")), None).error
    assert SECRET not in error and "https://u:***@h/?token=*** --api-key=***" in error
