"""The ``shell`` agent against real scripts and real processes."""
from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dispatch.agents import AgentInvocation, make_agent, run_agent
from dispatch.config import DispatchConfig
from dispatch.errors import ConfigError
from dispatch.models import ContextItem, TaskContext, TaskSpec

PY = sys.executable


def agent(**options):
    config = DispatchConfig.model_validate({"agents": {"sh": {"kind": "shell", **options}}})
    return make_agent("sh", config)


def invoke(workspace: Path, *, task_id="t1", description="do the thing", input_data=None, timeout_s=30.0,
           context=None, deps=None) -> AgentInvocation:
    task = TaskSpec(task_id=task_id, agent="sh", description=description, input_data=input_data or {})
    return AgentInvocation(task=task, context=context, dependency_outputs=deps or {}, user_prompt="the request",
                           workspace_path=str(workspace), run_id="run-1", attempt=1, timeout_s=timeout_s)


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def gone(pid: int) -> bool:
    """Dead, or a zombie waiting for a parent that will never reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


def wait_gone(pid: int, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return gone(pid)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path


ARGV_DUMP = "import json, sys; print(json.dumps(sys.argv[1:]))"


def test_success_captures_output_and_exit_code(ws):
    outcome = run_agent(agent(command=["/bin/sh", "-c", "echo hello {task_id}; echo warn >&2"]), invoke(ws))
    assert outcome.success and outcome.error is None
    out = outcome.output
    assert out["exit_code"] == 0
    assert out["stdout"] == "hello t1\n" and out["stderr"] == "warn\n"
    assert out["stdout_truncated"] is False and out["stderr_truncated"] is False
    assert out["files"] == [] and out["timed_out"] is False and out["duration_ms"] >= 0
    json.dumps(out)


def test_nonzero_exit_is_failure_with_last_stderr_line(ws):
    outcome = run_agent(agent(command=["/bin/sh", "-c", "echo partial; echo first >&2; echo boom >&2; exit 3"]),
                        invoke(ws))
    assert not outcome.success and not outcome.transient
    assert outcome.error == "exit code 3: boom"
    assert outcome.output["exit_code"] == 3 and outcome.output["stdout"] == "partial\n"


def test_transient_exit_code_asks_for_retry(ws):
    outcome = run_agent(agent(command=["/bin/sh", "-c", "exit 75"], transient_exit_codes=[75]), invoke(ws))
    assert not outcome.success and outcome.transient and outcome.error == "exit code 75"


def test_killed_by_signal_is_named(ws):
    outcome = run_agent(agent(command=["/bin/sh", "-c", "kill -9 $$"]), invoke(ws))
    assert not outcome.success and outcome.error.startswith("killed by signal SIGKILL")


def test_timeout_kills_the_whole_process_group(ws, tmp_path):
    # leader -> child -> grandchild, all sleeping; the pids are written where the test can see them
    run = script(tmp_path, "tree.sh", f"""\
        #!/bin/sh
        /bin/sh -c 'sleep 60 & echo $! > {tmp_path}/grandchild; wait' &
        echo $! > {tmp_path}/child
        wait
        """)
    started = time.monotonic()
    outcome = run_agent(agent(command=[run], kill_grace_s=1.0), invoke(ws, timeout_s=0.5))
    elapsed = time.monotonic() - started
    assert not outcome.success and outcome.error == "timed out after 0.5s"
    assert outcome.output["timed_out"] is True
    assert elapsed < 5
    child = int((tmp_path / "child").read_text())
    grandchild = int((tmp_path / "grandchild").read_text())
    assert wait_gone(child) and wait_gone(grandchild)


def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(ws, tmp_path):
    run = script(tmp_path, "stubborn.sh", f"""\
        #!/bin/sh
        trap '' TERM
        echo $$ > {tmp_path}/leader
        while true; do sleep 0.05; done
        """)
    started = time.monotonic()
    outcome = run_agent(agent(command=[run], kill_grace_s=0.3), invoke(ws, timeout_s=0.3))
    assert not outcome.success and outcome.error == "timed out after 0.3s"
    assert time.monotonic() - started < 5
    assert wait_gone(int((tmp_path / "leader").read_text()))


def test_timeout_option_overrides_the_invocation(ws):
    outcome = run_agent(agent(command=["sleep", "5"], timeout_s=0.2, kill_grace_s=0.2), invoke(ws, timeout_s=60))
    assert outcome.error == "timed out after 0.2s"


def test_background_helpers_left_behind_are_cleaned_up(ws, tmp_path):
    # the helper inherits stdout: without killing the group the run would wait 60 s for EOF
    started = time.monotonic()
    outcome = run_agent(agent(command=["/bin/sh", "-c", f"sleep 60 & echo $! > {tmp_path}/bg; echo done"],
                              kill_grace_s=1.0), invoke(ws))
    assert outcome.success and outcome.output["stdout"] == "done\n"
    assert time.monotonic() - started < 5
    assert wait_gone(int((tmp_path / "bg").read_text()))


@pytest.mark.timeout(60)
def test_huge_output_is_capped_without_deadlock(ws):
    # 8 MiB on each stream, interleaved: a reader that drained only one pipe would deadlock
    code = ("import sys\n"
            "sys.stdout.write('START'); sys.stderr.write('ERRSTART')\n"
            "for _ in range(128):\n"
            "    sys.stdout.write('o' * 65536); sys.stderr.write('e' * 65536)\n"
            "sys.stdout.write('END'); sys.stderr.write('ERREND')\n")
    started = time.monotonic()
    outcome = run_agent(agent(command=[PY, "-c", code], max_output_bytes=1000), invoke(ws))
    assert outcome.success and time.monotonic() - started < 20
    out = outcome.output
    assert out["stdout_truncated"] and out["stderr_truncated"]
    assert out["stdout"].startswith("START") and out["stdout"].endswith("END")
    assert out["stderr"].startswith("ERRSTART") and out["stderr"].endswith("ERREND")
    assert "bytes truncated" in out["stdout"]
    assert len(out["stdout"]) < 1100 and len(out["stderr"]) < 1100


def test_output_at_the_cap_is_not_marked_truncated(ws):
    outcome = run_agent(agent(command=[PY, "-c", "print('x' * 99)"], max_output_bytes=100), invoke(ws))
    assert outcome.output["stdout"] == "x" * 99 + "\n" and not outcome.output["stdout_truncated"]


def test_shell_metacharacters_arrive_as_one_literal_argument(ws):
    description = "fix it; rm -rf / && echo $(touch pwned) `touch pwned2` | cat > owned"
    outcome = run_agent(agent(command=[PY, "-c", ARGV_DUMP, "{description}", "pre-{task_id}-post"]),
                        invoke(ws, description=description))
    assert outcome.success
    assert json.loads(outcome.output["stdout"]) == [description, "pre-t1-post"]
    assert list(ws.iterdir()) == []


def test_input_placeholders_inside_arguments(ws):
    data = {"name": "db writer", "n": 3, "flag": True, "cfg": {"host": "h1", "ports": [5432, 5433]}}
    outcome = run_agent(agent(command=[PY, "-c", ARGV_DUMP, "--name={input.name}", "{input.n}", "{input.flag}",
                                       "{input.cfg.host}:{input.cfg.ports.1}", "{input.cfg}", "{{literal}}",
                                       "$${HOME}", "{'a': 1}"]),
                        invoke(ws, input_data=data))
    assert outcome.success, outcome.error
    assert json.loads(outcome.output["stdout"]) == [
        "--name=db writer", "3", "true", "h1:5433", '{"host": "h1", "ports": [5432, 5433]}', "{literal}",
        "${HOME}", "{'a': 1}"]  # $${NAME}: a literal ${NAME} (${NAME} is the worker's variable)


def test_missing_input_key_fails_the_task_not_the_worker(ws):
    outcome = run_agent(agent(command=["echo", "{input.absent}"]), invoke(ws, input_data={"other": 1}))
    assert not outcome.success
    assert "input_data has no 'absent'" in outcome.error and "command[1]" in outcome.error


def test_env_allow_list_keeps_secrets_out(ws, monkeypatch):
    monkeypatch.setenv("DISPATCH_TEST_SECRET", "s3cret")
    monkeypatch.setenv("MYTOOL_LEVEL", "7")
    dump_env = [PY, "-c", "import json, os; print(json.dumps(dict(os.environ)))"]

    env = json.loads(run_agent(agent(command=dump_env), invoke(ws)).output["stdout"])
    assert "DISPATCH_TEST_SECRET" not in env and "MYTOOL_LEVEL" not in env
    assert env["PATH"] == os.environ["PATH"]
    assert env["DISPATCH_TASK_ID"] == "t1" and env["DISPATCH_RUN_ID"] == "run-1" and env["DISPATCH_ATTEMPT"] == "1"
    assert env["DISPATCH_IDEMPOTENCY_KEY"] == "run-1:t1:1"

    configured = agent(command=dump_env, env_allow=["PATH", "MYTOOL_*"], env={"MODE": "batch-{task_id}"})
    env = json.loads(run_agent(configured, invoke(ws)).output["stdout"])
    assert env["MYTOOL_LEVEL"] == "7" and env["MODE"] == "batch-t1"
    assert "DISPATCH_TEST_SECRET" not in env and "HOME" not in env


def test_default_cwd_is_the_workspace_and_cwd_option_is_relative_to_it(ws):
    (ws / "sub").mkdir()
    pwd = [PY, "-c", "import os; print(os.getcwd())"]
    assert run_agent(agent(command=pwd), invoke(ws)).output["stdout"].strip() == str(ws)
    assert run_agent(agent(command=pwd, cwd="sub"), invoke(ws)).output["stdout"].strip() == str(ws / "sub")
    missing = run_agent(agent(command=pwd, cwd="nope"), invoke(ws))
    assert not missing.success and "is not a directory" in missing.error


def test_per_task_dir_is_fresh_private_and_removed(ws):
    write = [PY, "-c", "import os; open('result.txt', 'w').write('{task_id}'); print(os.getcwd())"]
    sh = agent(command=write, per_task_dir=True, outputs=["*.txt"])
    first, second = run_agent(sh, invoke(ws, task_id="a")), run_agent(sh, invoke(ws, task_id="b"))
    dirs = [first.output["stdout"].strip(), second.output["stdout"].strip()]
    assert dirs[0] != dirs[1] and str(ws) not in dirs
    assert not any(os.path.exists(d) for d in dirs)
    assert first.output["files"] == [{"path": "result.txt", "size": 1, "content": "a"}]
    assert list(ws.iterdir()) == []

    kept = run_agent(agent(command=write, per_task_dir=True, keep_task_dir=True), invoke(ws, task_id="c"))
    assert Path(kept.output["task_dir"], "result.txt").read_text() == "c"


def test_declared_output_files_are_collected(ws, tmp_path):
    (tmp_path / "outside.txt").write_text("secret outside")
    code = textwrap.dedent(f"""\
        import os
        os.makedirs('out/deep', exist_ok=True)
        open('out/a.txt', 'w').write('alpha')
        open('out/deep/b.py', 'w').write('print(1)')
        open('out/blob.bin', 'wb').write(bytes([0, 1, 2, 255]))
        open('big.log', 'w').write('x' * 5000)
        open('ignored.md', 'w').write('not declared')
        os.symlink({str(tmp_path / 'outside.txt')!r}, 'out/link.txt')
        """)
    outcome = run_agent(agent(command=[PY, "-c", code], outputs=["out/**/*", "big.log"], max_file_bytes=1000),
                        invoke(ws))
    assert outcome.success, outcome.error
    files = {f["path"]: f for f in outcome.output["files"]}
    assert set(files) == {"out/a.txt", "out/deep/b.py", "out/blob.bin", "big.log"}
    assert files["out/a.txt"] == {"path": "out/a.txt", "size": 5, "content": "alpha"}
    assert files["out/deep/b.py"]["content"] == "print(1)"
    assert files["out/blob.bin"] == {"path": "out/blob.bin", "size": 4, "content": None}
    assert files["big.log"] == {"path": "big.log", "size": 5000, "content": None}
    assert outcome.output["files_truncated"] is False


def test_output_file_count_is_capped(ws):
    code = "for i in range(5): open(f'f{{i}}.txt', 'w').write(str(i))"  # {{i}}: a literal {i}
    outcome = run_agent(agent(command=[PY, "-c", code], outputs=["*.txt"], max_files=3), invoke(ws))
    assert len(outcome.output["files"]) == 3 and outcome.output["files_truncated"] is True


def test_context_file_holds_task_context_and_is_removed(ws):
    context = TaskContext(task_id="t1", items=[ContextItem(id="c1", source="src/db.py", content="def write(): ...")])
    code = "import json, sys; d = json.load(open(sys.argv[1])); print(json.dumps(d)); print(sys.argv[1])"
    outcome = run_agent(agent(command=[PY, "-c", code, "{context_file}"]),
                        invoke(ws, context=context, deps={"up": {"value": 42}}, input_data={"k": "v"}))
    first, path = outcome.output["stdout"].splitlines()
    document = json.loads(first)
    assert document["task"]["task_id"] == "t1" and document["task"]["input_data"] == {"k": "v"}
    assert document["context"]["items"][0]["source"] == "src/db.py"
    assert document["dependency_outputs"] == {"up": {"value": 42}}
    assert "def write(): ..." in document["prompt"] and document["user_prompt"] == "the request"
    assert not os.path.exists(path)


def test_prompt_on_stdin(ws):
    outcome = run_agent(agent(command=[PY, "-c", "import sys; print(len(sys.stdin.read()))"], stdin="{prompt}"),
                        invoke(ws, description="y" * 300_000))  # longer than one argv element may be
    assert outcome.success and int(outcome.output["stdout"]) > 300_000


def test_stdin_is_closed_when_not_configured(ws):
    outcome = run_agent(agent(command=[PY, "-c", "import sys; print(repr(sys.stdin.read()))"]), invoke(ws))
    assert outcome.output["stdout"].strip() == "''"


def test_parse_json(ws):
    ok = run_agent(agent(command=[PY, "-c", "print('log line'); print('{\"n\": 1}')"], parse_json=True), invoke(ws))
    assert ok.success and ok.output["json"] == {"n": 1}
    bad = run_agent(agent(command=["echo", "not json"], parse_json=True), invoke(ws))
    assert not bad.success and bad.error.startswith("stdout is not JSON")
    cut = run_agent(agent(command=[PY, "-c", "print('[' + '1,' * 500 + '1]')"], parse_json=True,
                          max_output_bytes=100), invoke(ws))
    assert not cut.success and "truncated" in cut.error


def test_missing_program_is_a_failed_outcome(ws):
    outcome = run_agent(agent(command=["definitely-not-a-program-xyz", "{task_id}"]), invoke(ws))
    assert not outcome.success and outcome.error == "command not found: definitely-not-a-program-xyz"


def test_missing_workspace_is_a_failed_outcome(tmp_path):
    outcome = run_agent(agent(command=["true"]), invoke(tmp_path / "absent"))
    assert not outcome.success and "workspace" in outcome.error


@pytest.mark.parametrize("options, message", [
    ({"command": ["x", "{descripton}"]}, "unknown placeholder {descripton}"),
    ({"command": ["x"], "comand": ["y"]}, "comand"),
    ({}, "command"),
    ({"command": []}, "command"),
    ({"command": ["x"], "cwd": "a", "per_task_dir": True}, "exclude each other"),
    ({"command": ["x"], "outputs": ["/etc/*"]}, "relative"),
    ({"command": ["x"], "outputs": ["../*"]}, "relative"),
    ({"command": ["x"], "cwd": "{cwd}/a"}, "unknown placeholder {cwd}"),
    ({"command": ["x"], "env": {"A": "{nope}"}}, "env.A"),
])
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError) as err:
        agent(**options)
    assert message in str(err.value) and "agent 'sh' (shell)" in str(err.value)


def test_argument_too_long_points_to_stdin(ws):
    outcome = run_agent(agent(command=["echo", "{prompt}"]), invoke(ws, description="z" * 200_000))
    assert not outcome.success and outcome.error.startswith("argument list too long")


def test_unreadable_output_file_is_reported_not_fatal(ws, monkeypatch):
    real_read = Path.read_bytes

    def read_bytes(self):  # root reads anything, so refusal is simulated
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied")
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    code = "open('locked.txt', 'w').write('x'); open('ok.txt', 'w').write('y'); print('ran')"
    outcome = run_agent(agent(command=[PY, "-c", code], outputs=["*.txt"]), invoke(ws))
    assert outcome.success and outcome.output["stdout"] == "ran\n"
    assert outcome.output["files"] == [
        {"path": "locked.txt", "size": None, "content": None, "error": "Permission denied"},
        {"path": "ok.txt", "size": 1, "content": "y"}]
