"""All human I/O: commands and their arguments, reading input, the log, progress, interactive checkpoints.

Nothing below this package knows there is a terminal, and nothing imports it.
"""
from dispatch.cli.main import main

__all__ = ["main"]
