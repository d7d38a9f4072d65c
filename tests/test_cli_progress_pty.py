"""The live progress line in a real 80-column pseudo-terminal, read back through a terminal emulator.

pexpect gives the CLI a pty of 24x80; pyte replays every byte the CLI wrote
as a VT100 would, so the test sees the screen a person sees: each redraw of
the live line must fit one row (a wrapped line cannot be erased by ``\\r``),
and once the run ends no progress text may be left anywhere on the screen.
"""
from __future__ import annotations

import json
import os
import re
import sys

import pytest

from conftest import PYTHON, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pty test")]
pexpect = pytest.importorskip("pexpect")
pyte = pytest.importorskip("pyte")

PROGRESS = re.compile(r"\[[#-]{5,}\]|tasks finished|\d+s elapsed|\d+/4 (tasks )?\(\d+%\)")  # any live-line form
COLUMNS, ROWS = 80, 200  # tall enough that nothing scrolls off: the whole log stays on the screen


def sleepy(n: int, ms: int) -> str:
    return json.dumps({"tasks": [{"task_id": f"sleeper-with-a-long-name-{i}", "agent": "sleep",
                                  "description": "wait", "input_data": {"duration_ms": ms}} for i in range(n)],
                       "config": {"max_workers": 1}})


def test_live_line_fits_80_columns_and_leaves_no_stale_line(tmp_path):
    (tmp_path / "in.json").write_text(sleepy(n=4, ms=700))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env.update(DISPATCH_STATE_DIR=str(tmp_path / "state"), TERM="xterm", COLUMNS=str(COLUMNS))
    command = f"{PYTHON} {ROOT / 'cli.py'} < {tmp_path / 'in.json'} > {tmp_path / 'out.json'}"
    child = pexpect.spawn("/bin/sh", ["-c", command], env=env, cwd=str(ROOT), timeout=90, encoding="utf-8",
                          dimensions=(ROWS, COLUMNS))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    tty = child.before
    assert json.loads((tmp_path / "out.json").read_text())["success"] is True

    # every redraw, as written: one row at most (the last column is left free: some terminals wrap there)
    redraws = [part.split("\r\n")[0] for part in tty.split("\r\x1b[K")[1:] if part.strip()]
    live = [r for r in redraws if PROGRESS.search(r)]
    assert len(live) >= 2, tty  # the phase ran long enough to be redrawn several times
    assert all(len(r) <= COLUMNS - 1 for r in live), [r for r in live if len(r) >= COLUMNS]
    assert any("[DispatchRunner] Phase 4 [" in r for r in live)

    # the screen a person is left with: the log, and no progress text on any row
    screen = pyte.Screen(COLUMNS, ROWS)
    stream = pyte.Stream(screen)
    stream.feed(tty.replace("\r\n", "\n").replace("\n", "\r\n"))  # the pty already maps \n to \r\n
    rows = [line.rstrip() for line in screen.display]
    assert not [r for r in rows if PROGRESS.search(r)], "\n".join(rows)
    text = "\n".join(rows)
    assert "✓ Phase 4 completed" in text and "✓ sleeper-with-a-long-name-3 sleep" in text
    phase_4 = rows.index(next(r for r in rows if r.endswith("Phase 4: Parallel Execution")))
    # nothing between the phase header and its result lines but the header block and the first log line
    assert rows[phase_4 + 1] == "[DispatchRunner] Tasks: 4" and rows[phase_4 + 2] == "=" * 80
