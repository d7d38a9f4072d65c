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



class RunInterrupted(DispatchError):
    """SIGINT or SIGTERM stopped a run in this process: its state was saved (finished results kept, the run
    marked cancelled) and it can be resumed.  Exit 130 (SIGINT) or 143 (SIGTERM), the shell's convention."""

    def __init__(self, message: str, state: object, signum: int) -> None:
        super().__init__(message)
        self.state = state
        self.signum = signum
        self.exit_code = 128 + signum
