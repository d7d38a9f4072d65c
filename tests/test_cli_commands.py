"""The command tree as a new user meets it: help, version, typos, completion, usage errors, tables.

Most run in-process through ``cli.main`` (fast, nothing submitted); the ones
about what a shell sees (start-up imports, the completion script in a real
bash) run ``python cli.py`` as a subprocess.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from conftest import PYTHON, ROOT, base_env, run_cli
from dispatch import cli
from dispatch.store.state import DirectoryStateStore
from test_report import sample_state

RUN_FLAGS = ("--only-phase", "--stop-after-phase", "--skip-phases", "--save-phase-state", "--load-phase-state",
             "--enable-context", "--enable-quorum", "--interactive", "--input-file", "--resume-session",
             "--config", "--no-wait", "--quiet")
COMMANDS = ("run", "runs", "show", "wait", "report", "resume", "cancel", "schema", "help", "completion")


@pytest.fixture
def call(monkeypatch, tmp_path, capsys):
    """``cli.main`` in an embedded environment with a private state folder; returns (code, out, err)."""
    for key in [k for k in os.environ if k.startswith("DISPATCH_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DISPATCH_STATE_DIR", str(tmp_path / "state"))

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    run.store = DirectoryStateStore(tmp_path / "state")  # type: ignore[attr-defined]
    return run


# ------------------------------------------------------------------- help
def test_help_lists_every_command_and_every_run_flag(call):
    code, out, err = call("--help")
    assert code == 0 and err == ""
    for name in COMMANDS:
        assert f"\n  {name} " in out
    for flag in RUN_FLAGS:
        assert flag in out
    assert "backward compatible" not in out.lower()
    assert "Phase control (dispatch run)" in out and "State management (dispatch run)" in out
    assert "phases 0 and 1 run only when enabled" in " ".join(out.split())


def test_help_command_and_version(call):
    assert call("help") == call("--help")
    code, out, _ = call("help", "show")
    assert code == 0 and "Usage: dispatch show [OPTIONS] RUN_ID" in out and "--json" in out
    code, out, _ = call("help", "wait")
    assert code == 0 and "same progress, log, JSON" in " ".join(out.split())
    code, out, _ = call("--version")
    from importlib.metadata import version

    assert code == 0 and out.strip() == f"dispatch {version('dispatch')}"
    code, out, _ = call("run", "--help")
    assert code == 0 and all(flag in out for flag in RUN_FLAGS)


@pytest.mark.parametrize("args, message", [
    (["shwo", "X"], "no such command 'shwo'. Did you mean 'show'?"),
    (["rusn"], "Did you mean 'run' or 'runs'?"),
    (["help", "shwo"], "no such command 'shwo'. Did you mean 'show'?"),
    (["frobnicate"], "(commands: run, runs, show, wait"),
    (["tasks.json"], "To run the tasks in a file: dispatch -f tasks.json"),
    (["--skip-phases", "x"], "expected comma-separated phase numbers like 0,1, got 'x'"),
    (["--only-phase", "two"], "'two' is not a valid integer"),
    (["--bogus"], "No such option '--bogus'"),
    (["--skip-phase", "1"], "Did you mean one of: '--only-phase', '--skip-phases'"),
    (["show"], "Missing argument 'RUN_ID'"),
    (["report", "--format", "pdf", "x"], "'pdf' is not one of 'html', 'text'"),
    (["completion", "tcsh"], "'tcsh' is not one of 'bash', 'zsh', 'fish'"),
    (["runs", "--limit", "0"], "0 is not in the range x>=1"),
])
def test_usage_errors_exit_2_with_one_clear_line(call, args, message):
    code, out, err = call(*args)
    assert code == 2 and out == "", err
    assert err.startswith("[DispatchRunner] ✗ ") and message in err and "Traceback" not in err
    assert "see 'dispatch" in err and "--help'" in err


def test_help_starts_without_pydantic_or_celery():
    """``--help`` is fast because it imports neither: checked on the real import list."""
    proc = subprocess.run([PYTHON, "-X", "importtime", str(ROOT / "cli.py"), "--help"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "click" in imported and "dispatch.cli.main" in imported
    assert not {m for m in imported if m.split(".")[0] in ("celery", "kombu", "pydantic", "redis")}, imported


# ------------------------------------------------------------- completion
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(call, shell):
    code, out, _ = call("completion", shell)
    assert code == 0 and "_DISPATCH_COMPLETE" in out and "dispatch" in out


@pytest.mark.skipif(not shutil.which("bash"), reason="bash not installed")
def test_bash_completion_completes_commands_and_flags(tmp_path):
    """The generated script, sourced into a real bash, asks the real CLI for the candidates."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "dispatch").write_text(f"#!/bin/sh\nexec {PYTHON} {ROOT / 'cli.py'} \"$@\"\n")
    (bindir / "dispatch").chmod(0o755)
    env = {**base_env(tmp_path), "PATH": f"{bindir}:{os.environ['PATH']}"}
    script = run_cli(["completion", "bash"], env=env).stdout

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        probe = (f'{script}\nCOMP_WORDS=({" ".join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}; '
                 f'_dispatch_completion dispatch; printf "%s\\n" "${{COMPREPLY[@]}}"')
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert {"show", "schema"} <= set(complete("dispatch s")) and "run" not in complete("dispatch s")
    assert "--skip-phases" in complete("dispatch run --skip")
    assert "--stop-after-phase" in complete("dispatch --stop")  # the default command's flags, with no command
    assert complete("dispatch report x --format ") == ["html", "text"]


# ---------------------------------------------------------- runs and show
def test_runs_and_show_print_tables_and_json_on_request(call):
    state = sample_state()
    call.store.save(state)
    code, out, err = call("runs")
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split() == ["RUN", "ID", "STARTED", "(UTC)", "STATUS", "PHASES", "WALL", "TASKS", "OK"]
    assert row.split()[:5] == ["run-7f3a", "2025-10-07", "16:30:00", "failed", "0,1,2,3,4"]
    assert "8/11 (1 failed)" in row and "5.1 s" in row
    assert "1 run from the folder" in err

    code, out, _ = call("runs", "--json")
    listed = json.loads(out)["runs"]
    assert listed[0]["run_id"] == "run-7f3a" and listed[0]["tasks"] == {"total": 11, "succeeded": 8, "failed": 1,
                                                                         "skipped": 2}

    code, out, err = call("show", "run-7f3a")
    assert code == 0 and out.startswith("dispatch run run-7f3a · failed · wall time 5.1 s")
    assert "PHASES" in out and "TASKS  8 ok, 1 failed, 2 skipped on 3 workers" in out
    flaky = next(line for line in out.splitlines() if "flaky-migration" in line)
    assert "celery@gamma" in flaky and "480 ms" in flaky and "migrate.sh exited 3" in flaky
    assert "dispatch show run-7f3a --json" in err

    code, out, _ = call("show", "run-7f3a", "--json")
    assert code == 0 and json.loads(out) == json.loads(state.model_dump_json())


def test_show_names_the_store_it_searched(call, tmp_path):
    code, out, err = call("show", "nope")
    assert code == 2 and out == ""
    assert f"no run 'nope' in the folder {(tmp_path / 'state' / 'runs').resolve()}" in err
    code, out, err = call("runs")
    assert code == 0 and out.startswith("No runs in the folder")


def test_show_caps_a_large_run_with_failures_first(call):
    from dispatch.models import TaskResult

    state = sample_state()
    state.task_results += [TaskResult(task_id=f"bulk-{i}", agent="echo", success=True, duration_ms=1,
                                      output={"description": f"bulk {i}"}) for i in range(80)]
    call.store.save(state)
    code, out, _ = call("show", "run-7f3a")
    rows = [line for line in out.splitlines() if "✓ ok" in line or "✗ failed" in line or "⚠ skipped" in line]
    task_rows = [r for r in rows if not r.lstrip()[0].isdigit()]
    assert len(task_rows) == 50 and "flaky-migration" in task_rows[0]
    assert "… and 41 more tasks (failed ones are listed first)" in out


def test_wait_and_cancel_need_a_broker(call):
    code, _, err = call("wait", "some-run")
    assert code == 2 and "wait follows a run on a broker" in err
    code, _, err = call("cancel", "some-run")
    assert code == 2 and "cancel needs a broker" in err


def test_no_command_is_run(call, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, out, err = call()
    assert code == 2 and out == "" and "no input" in err
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert call("run")[0] == 2
