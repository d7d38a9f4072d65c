"""Progress of a long phase on stderr, while the CLI waits for it.

Two renderings of the same updates.  On a terminal, one live line redrawn in
place (``\\r`` and erase-to-end) and erased before the next log line, so the
guide's log reads the same with or without it.  The live line always fits the
terminal's width (read at every redraw, so a resize is followed): a line that
wrapped could not be erased by ``\\r``, and each redraw would leave a stale
copy.  Anywhere else (a file, a CI log) a redrawn line would be noise, so plain
``[DispatchRunner]`` lines are written instead, at most one per
``interval_s`` and only once a phase has run that long: short phases print
nothing extra.  stdout is never touched.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Callable, Optional, TextIO

from dispatch.cli.log import PREFIX
from dispatch.models import ExecutionPhase

BAR_WIDTH = 20
LIVE_DELAY_S = 1.0  # a phase that ends within a second never draws a live line


class Progress:
    def __init__(self, stream: Optional[TextIO] = None, *, live: Optional[bool] = None, quiet: bool = False,
                 interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 width: Optional[int] = None) -> None:
        self.stream = stream or sys.stderr
        self.width = width  # None: the terminal's, at each redraw
        self.live = self._isatty() if live is None else live
        self.quiet = quiet
        self.interval_s = interval_s
        self.clock = clock
        self._phase: Optional[ExecutionPhase] = None
        self._started = 0.0
        self.spent = ""
        self._last_plain = 0.0
        self._last_counts: Optional[tuple[int, int]] = None
        self._drawn = False

    def _isatty(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):
            return False

    @property
    def poll_s(self) -> float:
        """How often the waiting loop should call ``update``."""
        return 0.5 if self.live else min(2.0, self.interval_s)

    def start(self, phase: ExecutionPhase) -> None:
        self.clear()
        self._phase = phase
        self._started = self._last_plain = self.clock()
        self._last_counts = None
        self.spent = ""  # phase 4's spend so far, when its progress reports one (``~$0.04, 18.3k tokens``)

    def update(self, done: Optional[int] = None, total: Optional[int] = None) -> None:
        """Called on every poll with what the phase reports (``done/total`` for phase 4)."""
        if self.quiet or self._phase is None:
            return
        now = self.clock()
        elapsed = now - self._started
        counts = (done, total) if done is not None and total else None
        if self.live:
            if elapsed >= LIVE_DELAY_S:
                self._draw(self.fit(self._phase, elapsed, counts, self.columns(), self.spent))
            return
        if elapsed >= self.interval_s and now - self._last_plain >= self.interval_s:
            if counts is None or counts != self._last_counts or now - self._last_plain >= 3 * self.interval_s:
                line = self.render(self._phase, elapsed, counts, bar=False, spent=self.spent)
                self.stream.write(f"{PREFIX} {line}\n")
                self.stream.flush()
                self._last_plain = now
                self._last_counts = counts

    def clear(self) -> None:
        """Erase the live line (before a log line, or when the phase ends)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def finish(self) -> None:
        self.clear()
        self._phase = None

    def columns(self) -> int:
        if self.width:
            return self.width
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            return shutil.get_terminal_size().columns

    def _draw(self, text: str) -> None:
        self.stream.write(f"\r\x1b[K{text}")
        self.stream.flush()
        self._drawn = True

    @classmethod
    def fit(cls, phase: ExecutionPhase, elapsed: float, counts: Optional[tuple[int, int]], columns: int,
            spent: str = "") -> str:
        """The fullest live line shorter than the terminal (the last column would wrap on some terminals)."""
        room = max(columns - 1, 10)
        full = f"{PREFIX} {cls.render(phase, elapsed, counts, bar=True, spent=spent)}"
        if len(full) <= room:
            return full
        full = f"{PREFIX} {cls.render(phase, elapsed, counts, bar=True)}"
        if len(full) <= room:
            return full
        if counts is None:
            variants = [f"{PREFIX} Phase {phase.number} running, {elapsed:.0f}s",
                        f"Phase {phase.number} running, {elapsed:.0f}s"]
        else:
            done, total = counts
            share = min(1.0, done / total)
            variants = [f"{PREFIX} Phase {phase.number} {cls.gauge(share, BAR_WIDTH)} {done}/{total} tasks "
                        f"({share:.0%}), {elapsed:.0f}s",
                        f"Phase {phase.number} {cls.gauge(share, 10)} {done}/{total} ({share:.0%}) {elapsed:.0f}s",
                        f"P{phase.number} {done}/{total} {elapsed:.0f}s"]
        return next((v for v in variants if len(v) <= room), variants[-1][:room])

    @staticmethod
    def gauge(share: float, width: int) -> str:
        filled = round(share * width)
        return "[" + "#" * filled + "-" * (width - filled) + "]"

    @staticmethod
    def render(phase: ExecutionPhase, elapsed: float, counts: Optional[tuple[int, int]], bar: bool,
               spent: str = "") -> str:
        head = f"Phase {phase.number} ({phase.title})"
        if counts is None:
            return f"{head} running, {elapsed:.0f}s elapsed"
        done, total = counts
        share = min(1.0, done / total)
        gauge = Progress.gauge(share, BAR_WIDTH) + " " if bar else ""
        return f"{head} {gauge}{done}/{total} tasks finished ({share:.0%}), {elapsed:.0f}s elapsed" \
            + (f", spent {spent}" if spent else "")
