"""Progress of a long phase on stderr, while the CLI waits for it.

Two renderings of the same updates.  On a terminal, one live line redrawn in
place (``\\r`` and erase-to-end) and erased before the next log line, so the
guide's log reads the same with or without it.  Anywhere else (a file, a CI
log) a redrawn line would be noise, so plain ``[DispatchRunner]`` lines are
written instead, at most one per ``interval_s`` and only once a phase has run
that long: short phases print nothing extra.  stdout is never touched.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

from dispatch.cli.log import PREFIX
from dispatch.models import ExecutionPhase

BAR_WIDTH = 20
LIVE_DELAY_S = 1.0  # a phase that ends within a second never draws a live line


class Progress:
    def __init__(self, stream: Optional[TextIO] = None, *, live: Optional[bool] = None, quiet: bool = False,
                 interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.live = self._isatty() if live is None else live
        self.quiet = quiet
        self.interval_s = interval_s
        self.clock = clock
        self._phase: Optional[ExecutionPhase] = None
        self._started = 0.0
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

    def update(self, done: Optional[int] = None, total: Optional[int] = None) -> None:
        """Called on every poll with what the phase reports (``done/total`` for phase 4)."""
        if self.quiet or self._phase is None:
            return
        now = self.clock()
        elapsed = now - self._started
        counts = (done, total) if done is not None and total else None
        if self.live:
            if elapsed >= LIVE_DELAY_S:
                self._draw(self.render(self._phase, elapsed, counts, bar=True))
            return
        if elapsed >= self.interval_s and now - self._last_plain >= self.interval_s:
            if counts is None or counts != self._last_counts or now - self._last_plain >= 3 * self.interval_s:
                self.stream.write(f"{PREFIX} {self.render(self._phase, elapsed, counts, bar=False)}\n")
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

    def _draw(self, text: str) -> None:
        self.stream.write(f"\r\x1b[K{PREFIX} {text}")
        self.stream.flush()
        self._drawn = True

    @staticmethod
    def render(phase: ExecutionPhase, elapsed: float, counts: Optional[tuple[int, int]], bar: bool) -> str:
        head = f"Phase {phase.number} ({phase.title})"
        if counts is None:
            return f"{head} running, {elapsed:.0f}s elapsed"
        done, total = counts
        share = min(1.0, done / total)
        gauge = ""
        if bar:
            filled = round(share * BAR_WIDTH)
            gauge = "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "] "
        return f"{head} {gauge}{done}/{total} tasks finished ({share:.0%}), {elapsed:.0f}s elapsed"
