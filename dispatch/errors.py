"""Exceptions that map onto the CLI's exit codes (DESIGN.md: 0 ok, 1 failed run, 2 bad input)."""


class DispatchError(Exception):
    exit_code = 1


class UsageError(DispatchError):
    """Bad flags, bad input, bad state file: exit 2 before anything is submitted."""

    exit_code = 2


class InputError(UsageError):
    """The task breakdown itself is invalid; the message names the path of the fault."""


class ConfigError(UsageError):
    """The config file (agents, validators, retrievers) is invalid."""


class StateFileError(UsageError):
    """A state or session file that is corrupt, truncated, foreign or of another version."""

