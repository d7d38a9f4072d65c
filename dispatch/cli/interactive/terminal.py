"""The controlling terminal (``/dev/tty``), for prompts, summaries and the editor.

Opened directly: the task breakdown may be arriving on stdin, stdout carries
only the JSON result, and the log goes to stderr.  No terminal means no one to
ask, which is a usage error.
"""
from __future__ import annotations

import os
from typing import Any

from dispatch.errors import UsageError


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
        line = self.reader.readline()
        if not line:
            raise EOFError
        return line.strip()

    def close(self) -> None:
        for stream in (self.reader, self.writer):
            try:
                stream.close()
            except OSError:
                pass
