"""Progress of long phases on stderr: plain lines off a terminal, one live line on it; stdout stays JSON."""
from __future__ import annotations

import io
import json
import os
import sys

import pytest

from conftest import PYTHON, ROOT
from dispatch.models import ExecutionPhase
from dispatch.cli.progress import Progress

P4 = ExecutionPhase.PARALLEL_EXECUTION


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_only_for_long_phases_and_at_most_one_per_interval():
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, interval_s=10, clock=clock)
    assert not progress.live
    progress.start(P4)
    for t, done in ((1, 1), (5, 2), (9.9, 3)):
        clock.now = 100 + t
        progress.update(done, 10)
    assert out.getvalue() == ""  # a phase shorter than the interval prints nothing extra
    clock.now = 111
    progress.update(4, 10)
    clock.now = 115
    progress.update(6, 10)  # within the interval of the last line: held back
    clock.now = 121.5
    progress.update(6, 10)
    clock.now = 132
    progress.update(6, 10)  # unchanged: not repeated until 3 intervals have passed
    assert out.getvalue().splitlines() == [
        "[DispatchRunner] Phase 4 (Parallel Execution) 4/10 tasks finished (40%), 11s elapsed",
        "[DispatchRunner] Phase 4 (Parallel Execution) 6/10 tasks finished (60%), 22s elapsed",
    ]
    progress.start(ExecutionPhase.QUORUM_VALIDATION)
    clock.now = 145
    progress.update()
    assert out.getvalue().splitlines()[-1] == "[DispatchRunner] Phase 1 (Quorum Validation) running, 13s elapsed"


def test_live_line_is_redrawn_in_place_and_erased_before_the_log_goes_on():
    out, clock = Tty(), Clock()
    progress = Progress(out, clock=clock, width=120)
    assert progress.live and progress.poll_s == 0.5
    progress.start(P4)
    clock.now = 100.5
    progress.update(0, 4)
    assert out.getvalue() == ""  # nothing within the first second
    clock.now = 102
    progress.update(1, 4)
    clock.now = 103
    progress.update(3, 4)
    progress.finish()
    text = out.getvalue()
    assert text.count("\r\x1b[K[DispatchRunner] Phase 4") == 2 and "\n" not in text
    assert "[#####---------------] 1/4 tasks finished (25%), 2s elapsed" in text
    assert "[###############-----] 3/4 tasks finished (75%), 3s elapsed" in text
    assert text.endswith("\r\x1b[K")


def test_quiet_prints_nothing():
    out, clock = Tty(), Clock()
    progress = Progress(out, quiet=True, clock=clock)
    progress.start(P4)
    clock.now = 200
    progress.update(1, 2)
    progress.finish()
    assert out.getvalue() == ""


def sleepy(n: int = 4, ms: int = 700) -> str:
    return json.dumps({"tasks": [{"task_id": f"t{i}", "agent": "sleep", "description": "wait",
                                  "input_data": {"duration_ms": ms}} for i in range(n)],
                       "config": {"max_workers": 1}})


def test_embedded_run_reports_phase_4_progress_on_stderr_and_keeps_stdout_json(cli):
    run = cli(stdin=sleepy(), extra_env={"DISPATCH_PROGRESS_INTERVAL_S": "0.5"})
    assert run.returncode == 0, run.stderr
    assert run.json["status"] == "succeeded"  # stdout is exactly one JSON document
    lines = [line for line in run.stderr.splitlines() if "tasks finished" in line]
    assert lines, run.stderr
    assert all(line.startswith("[DispatchRunner] Phase 4 (Parallel Execution) ") for line in lines)
    counts = [int(line.split(") ")[1].split("/")[0]) for line in lines]
    assert counts == sorted(counts) and all(0 <= c < 4 for c in counts) and "/4 tasks" in lines[0]
    assert "\r" not in run.stderr  # not a terminal: no live redraws


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pty test")
def test_live_progress_on_a_terminal_with_stdout_redirected(tmp_path):
    pexpect = pytest.importorskip("pexpect")
    (tmp_path / "in.json").write_text(sleepy(n=3, ms=900))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env["DISPATCH_STATE_DIR"] = str(tmp_path / "state")
    command = f"{PYTHON} {ROOT / 'cli.py'} < {tmp_path / 'in.json'} > {tmp_path / 'out.json'}"
    child = pexpect.spawn("/bin/sh", ["-c", command], env=env, cwd=str(ROOT), timeout=60, encoding="utf-8")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    tty = child.before  # pexpect's terminal is 80 columns: the live line takes its short form
    assert "\x1b[K[DispatchRunner] Phase 4 [" in tty and "/3 tasks (" in tty
    assert "✓ Phase 4 completed" in tty
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["success"] and len(out["results"]) == 3
