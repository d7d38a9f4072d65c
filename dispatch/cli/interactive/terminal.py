"""The controlling terminal (``/dev/tty``), for prompts, summaries and the editor.

Opened directly: the task breakdown may be arriving on stdin, stdout carries
only the JSON result, and the log goes to stderr.  No terminal means no one to
ask, which is a usage error.

A prompt reads the terminal a byte at a time behind ``select`` with a timeout,
not with a blocking ``readline``: a signal is delivered to any thread of the
process that does not block it, and one taken by another thread (the embedded
server's keeper, a worker thread still ending) interrupts no read of the main
thread, so Ctrl-C at a prompt would wait for a line that never comes.  Waking
every ``WAKE_S`` lets the main thread run its handler (``KeyboardInterrupt``).
"""
from __future__ import annotations

import io
import os
import select
from typing import Any, Optional

from dispatch.errors import UsageError


WAKE_S = 0.1  # how soon a prompt notices a signal another thread took


class Terminal:
    """The controlling terminal, for prompts, summaries and the editor."""

    def __init__(self, reader: Any, writer: Any) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    def open(cls, device: str = "/dev/tty") -> "Terminal":
        try:
            fd = os.open(device, os.O_RDWR | os.O_NOCTTY)
        except OSError as exc:
            raise UsageError(
                f"--interactive needs a terminal to ask at each checkpoint, and this process has none "
                f"({device}: {exc.strerror or exc}).\n"
                "  Run it from a terminal (the task JSON may still come on stdin or --input-file), or drop -i "
                "and use --stop-after-phase N --save-phase-state FILE to inspect between phases.") from None
        reader = os.fdopen(fd, "r", encoding="utf-8", errors="replace", closefd=True)
        writer = os.fdopen(os.dup(fd), "w", encoding="utf-8", errors="replace", closefd=True)
        return cls(reader, writer)

    @property
    def columns(self) -> int:
        try:
            return max(60, min(os.get_terminal_size(self.writer.fileno()).columns, 160))
        except (OSError, ValueError):
            return 100

    def say(self, text: str = "") -> None:
        try:
            self.writer.write(text + "\n")
            self.writer.flush()
        except OSError:  # the terminal went away (hang-up): the session file still records everything
            pass

    def ask(self, prompt: str) -> str:
        """One line from the terminal; EOF (Ctrl-D, hang-up) raises ``EOFError``."""
        self.writer.write(prompt)
        self.writer.flush()
        line = self.read_line()
        if not line:
            raise EOFError
        return line.strip()

    def read_line(self) -> str:
        """One line ("" at end of input), waking every ``WAKE_S`` for pending signals."""
        fd = self._fileno()
        if fd is None:  # not a descriptor (a caller's stream): its own readline
            return self.reader.readline()
        data = bytearray()
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], WAKE_S)
            if not ready:
                continue
            byte = os.read(fd, 1)  # one byte: the rest stays in the terminal, where select sees it
            if not byte:
                break
            data += byte
        return data.decode("utf-8", errors="replace")

    def _fileno(self) -> Optional[int]:
        try:
            return self.reader.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            return None

    def close(self) -> None:
        for stream in (self.reader, self.writer):
            try:
                stream.close()
            except OSError:
                pass
