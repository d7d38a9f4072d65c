"""Sessions through the real CLI: quit and resume, Ctrl-C, no terminal, bad session files, Redis."""
from __future__ import annotations

import ctypes
import json
import os
import platform
import shlex
import signal
import time
from pathlib import Path

import pytest

from interactive_pty import PROMPT, TASKS, PtyCli, answer, finish, run_plain


@pytest.fixture
def pty_cli(tmp_path: Path) -> PtyCli:
    return PtyCli(tmp_path)


def test_quit_then_resume_keeps_edits_and_does_not_rerun(pty_cli: PtyCli) -> None:
    tasks = pty_cli.write("tasks.json", TASKS)
    pty_cli.edits({"describe": {"parser": "Write the config parser, edited before the quit"}})
    child = pty_cli.spawn(f"-i -f {tasks} --save-phase-state {pty_cli.tmp / 'saved.json'}")
    answer(child, "Checkpoint after phase 2", "e")
    answer(child, "Checkpoint after phase 2", "a")
    answer(child, "Checkpoint after phase 3", "q")
    child.expect(r"Resume with: python cli.py --resume-session (\S+)")
    session_file = Path(child.match.group(1))
    code, _ = finish(child)
    assert code == 0
    paused = pty_cli.result()
    assert paused["status"] == "paused" and paused["session_file"] == str(session_file)
    assert paused["phases_completed"] == [2, 3]
    before = json.loads(session_file.read_text())
    assert before["status"] == "paused" and before["decided"] == {"after-2": "approve"}
    started = {r["phase"]: r["started_at"] for r in before["state"]["phases_executed"] if not r["skipped"]}
    assert set(started) == {"TASK_PLANNING", "CONTEXT_FILTERING"}
    assert json.loads((pty_cli.tmp / "saved.json").read_text())["status"] == "paused"
    assert pty_cli.stored_run(paused["run_id"])["status"] == "paused"

    child = pty_cli.spawn(f"--resume-session {shlex.quote(str(session_file))}", out="resumed.json")
    child.expect_exact(f"Resuming run {paused['run_id']}")
    child.expect_exact("Checkpoint after phase 3")  # the first undecided checkpoint, with nothing run before it
    assert "Phase 2" not in child.before and "Phase 3" not in child.before
    shown = answer(child, "", "a")
    assert "edited before the quit" in shown
    answer(child, "Checkpoint after phase 4", "a")
    code, _ = finish(child)
    assert code == 0
    out = pty_cli.result("resumed.json")
    assert out["run_id"] == paused["run_id"] and out["success"] is True
    assert {r["phase"]: r["started_at"] for r in out["phases_executed"] if not r["skipped"]
            and r["phase"] != "PARALLEL_EXECUTION"} == started
    parser = next(r for r in out["results"] if r["task_id"] == "parser")
    assert parser["output"]["description"] == "Write the config parser, edited before the quit"
    assert json.loads(session_file.read_text())["status"] == "finished"
    assert json.loads((pty_cli.tmp / "saved.json").read_text())["status"] == "succeeded"  # the session's flag kept


def test_ctrl_c_at_a_checkpoint_saves_the_session(pty_cli: PtyCli) -> None:
    tasks = pty_cli.write("tasks.json", TASKS)
    child = pty_cli.spawn(f"-i -f {tasks}")
    child.expect_exact("Checkpoint after phase 2")
    child.expect(PROMPT)
    child.sendintr()
    child.expect(r"Resume with: .*--resume-session (\S+)")
    session_file = Path(child.match.group(1))
    code, _ = finish(child)
    assert code == 130
    assert json.loads(session_file.read_text())["status"] == "paused"
    assert pty_cli.result()["status"] == "paused"


TGKILL = {"x86_64": 234, "aarch64": 131}.get(platform.machine())


def cli_process(child) -> int:
    """The pid of ``python cli.py`` under the spawned shell (the shell itself, when it exec'ed)."""
    for _ in range(100):
        for pid in [child.pid, *open(f"/proc/{child.pid}/task/{child.pid}/children").read().split()]:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"cli.py" in argv[1:3] and b"bash" not in argv[0]:
                return int(pid)
        time.sleep(0.05)
    raise AssertionError("no cli.py process under the shell")


@pytest.mark.skipif(TGKILL is None, reason="tgkill's syscall number is known for x86_64 and aarch64 only")
def test_ctrl_c_taken_by_another_thread_still_stops_the_prompt(pty_cli: PtyCli) -> None:
    """A signal goes to any thread that does not block it: one the embedded server's keeper thread takes
    interrupts no read of the main thread, which must still see it (the CI flake of a hung Ctrl-C)."""
    tasks = pty_cli.write("tasks.json", TASKS)
    child = pty_cli.spawn(f"-i -f {tasks}")
    child.expect_exact("Checkpoint after phase 2")
    child.expect(PROMPT)
    pid = cli_process(child)
    others = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
    assert others, "the embedded run leaves no other thread: this test shows nothing"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(TGKILL, pid, others[0], int(signal.SIGINT)) == 0, os.strerror(ctypes.get_errno())
    child.expect(r"Resume with: .*--resume-session (\S+)", timeout=15)
    code, _ = finish(child)
    assert code == 130
    assert pty_cli.result()["status"] == "paused"


@pytest.mark.redis
@pytest.mark.slow
def test_each_stretch_is_one_submission_on_redis_with_one_run_id(pty_cli: PtyCli, distributed: dict) -> None:
    distributed["workers"].start("alpha")
    pty_cli.extra_env = {k: v for k, v in distributed["env"].items() if k.startswith("DISPATCH_")}
    tasks = pty_cli.write("tasks.json", TASKS)
    child = pty_cli.spawn(f"-i -f {tasks}")
    worker_log = pty_cli.tmp / "alpha.log"
    answer(child, "Checkpoint after phase 2", "a")
    assert "dispatch.phase_3_context_filtering[" not in worker_log.read_text()  # nothing runs while a human decides
    answer(child, "Checkpoint after phase 3", "a")
    assert "dispatch.phase_4_parallel_execution[" not in worker_log.read_text()
    answer(child, "Checkpoint after phase 4", "a")
    code, _ = finish(child)
    assert code == 0
    out = pty_cli.result()
    assert out["success"] is True and {r["worker"].split("@")[0] for r in out["results"]} == {"alpha"}
    # three chain submissions (phases 2, 3 and 4), one run id
    assert pty_cli.transcript.getvalue().count(f"Submitting run {out['run_id']} to redis://") == 3
    shown = run_plain(pty_cli, "show", out["run_id"], "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "succeeded"


def test_interactive_without_a_terminal_is_a_usage_error(pty_cli: PtyCli) -> None:
    tasks = pty_cli.write("tasks.json", TASKS)
    done = run_plain(pty_cli, "-i", stdin_file=tasks)
    assert done.returncode == 2
    assert "--interactive needs a terminal" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not (pty_cli.state_dir / "runs").exists()  # refused before anything was submitted


@pytest.mark.parametrize("content, message", [
    ("", "empty file, not a dispatch session"),
    ('{"kind": "dispatch.session", "schema_version": 1, "run_id": "r", "sta', "corrupt or truncated session"),
    ('{"phases_executed": [], "schema_version": 1, "run_id": "r"}', "looks like a phase state"),
    ('{"kind": "dispatch.session", "schema_version": 99}', "session schema_version 99 is not supported"),
    ('{"kind": "dispatch.session", "schema_version": 1, "run_id": "r"}', "invalid session: state: Field required"),
])
def test_bad_session_files_are_usage_errors(pty_cli: PtyCli, content: str, message: str) -> None:
    path = pty_cli.tmp / "session.json"
    path.write_text(content)
    done = run_plain(pty_cli, "--resume-session", str(path))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_flag_conflicts_are_usage_errors(pty_cli: PtyCli) -> None:
    tasks = pty_cli.write("tasks.json", TASKS)
    done = run_plain(pty_cli, "-i", "--no-wait", "-f", str(tasks))
    assert done.returncode == 2 and "cannot be combined with --no-wait" in done.stderr
    done = run_plain(pty_cli, "--resume-session", str(tasks), "--skip-phases", "3")
    assert done.returncode == 2 and "drop --skip-phases" in done.stderr
