"""The HTML report in a real browser: the timeline renders, the script runs clean.

Drives Debian's headless Chromium from the command line (``--dump-dom`` gives
the DOM after the page's script ran; ``--enable-logging=stderr`` puts every
console message and uncaught exception on stderr as ``CONSOLE`` lines).  The
screenshot and the page are kept under ``test-artifacts/`` for a person to
look at.  Skipped, with the reason, where Chromium is not installed.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from dispatch.report import render_html
from test_report import CRITICAL, TASKS, sample_state

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
SCREENSHOT = ARTIFACTS / "report-timeline.png"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not found: install Debian's chromium "
                       "(apt-get install chromium) to check the report in a browser"),
]


def chromium(profile: Path, page: Path, *args: str) -> subprocess.CompletedProcess:
    """One headless Chromium run on a local file, isolated from the network and any real profile."""
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           *args, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def console_lines(stderr: str) -> list[str]:
    """Every console message, uncaught exception and CSP refusal the page produced."""
    return [line for line in stderr.splitlines() if re.search(r":CONSOLE[:(]|Uncaught", line)]


@pytest.fixture
def report(tmp_path) -> Path:
    path = tmp_path / "report.html"
    path.write_text(render_html(sample_state()), encoding="utf-8")
    return path


def test_console_errors_are_caught_by_this_chromium(tmp_path):
    """The check below means nothing unless this Chromium reports a failing script on stderr."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><body><script>notDefined();</script></body>", encoding="utf-8")
    done = chromium(tmp_path / "profile", page, "--dump-dom")
    assert any("Uncaught ReferenceError: notDefined" in line for line in console_lines(done.stderr)), done.stderr


def test_timeline_renders_with_no_console_errors(report, tmp_path):
    done = chromium(tmp_path / "profile", report, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    assert console_lines(done.stderr) == []
    dom = done.stdout
    bars = re.findall(r'<g class="bar s-(\w+)(?: crit)?" data-key="[^"]+" data-tip="([^"]*)"', dom)
    assert len(bars) == len(TASKS) + 5  # every task and every phase, each with its tooltip text
    assert f'data-ready="{len(bars)}"' in dom  # the script ran to its end
    assert re.search(r'<div class="tip" id="tip" role="tooltip" hidden="">', dom)
    assert not re.search(r'data-key="[^"]+" data-tip="[^"]*"><title>', dom)  # titles moved to our tooltip
    assert [s for s, _ in bars].count("failed") == 2 and [s for s, _ in bars].count("skipped") == 2
    assert dom.count('class="crit-link"') == len(CRITICAL) - 1
    assert 'id="phase-timeline"' in dom and 'id="task-timeline"' in dom
    assert "&lt;script&gt;alert(" in dom and "<script>alert(" not in dom


def test_screenshot_is_saved_as_an_artefact(report, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    done = chromium(tmp_path / "profile", report, f"--screenshot={SCREENSHOT}", "--window-size=1400,1000",
                    "--hide-scrollbars")
    assert done.returncode == 0, done.stderr[-2000:]
    assert console_lines(done.stderr) == []
    data = SCREENSHOT.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 40_000  # a blank or unstyled page compresses to a few kB
    (ARTIFACTS / "report-timeline.html").write_text(report.read_text(encoding="utf-8"), encoding="utf-8")
