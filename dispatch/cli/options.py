"""The run flags, their help sections, and the one help layout every command shares.

click has no option groups of its own, and the guide documents the flags in
named groups ("Phase control", "State management", ...), so each option
carries a ``section`` and ``SectionedCommand`` prints them under it.  The run
flags are declared once here: ``dispatch run`` takes them, and the top-level
help lists them too, because ``dispatch`` with no subcommand is ``dispatch run``.
Nothing here imports pydantic or Celery: ``--help`` must start fast.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import click

PHASES = ("0 Context Gathering", "1 Quorum Validation", "2 Task Planning", "3 Context Filtering",
          "4 Parallel Execution")
PROG = "dispatch"  # the name in usage lines and completion scripts, also under ``python cli.py``
COMPLETE_VAR = "_DISPATCH_COMPLETE"  # what click's completion scripts set when they call back
ENVIRONMENT = ("DISPATCH_BROKER_URL (unset: an embedded in-process worker), DISPATCH_RESULT_BACKEND, "
               "DISPATCH_STATE_URL, DISPATCH_STATE_DIR (default .dispatch), DISPATCH_KEY_PREFIX, DISPATCH_CONFIG.")


def unknown_command_message(name: str, known: list[str]) -> str:
    """``no such command 'shwo'. Did you mean 'show'?``, with the way to a file of tasks."""
    import difflib

    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    if not close and name.endswith(".json"):
        hint = f" To run the tasks in a file: {PROG} -f {name}"
    listing = "" if close else f" (commands: {', '.join(known)})"
    return f"no such command {name!r}.{hint}{listing}"


class SectionOption(click.Option):
    """A ``click.Option`` that knows which help section it belongs to."""

    def __init__(self, *args: Any, section: str = "Options", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section


def option(*decls: str, section: str, **kwargs: Any) -> Callable:
    return click.option(*decls, cls=SectionOption, section=section, **kwargs)


def write_sections(command: click.Command, ctx: click.Context, formatter: click.HelpFormatter,
                   title: Optional[str] = None) -> None:
    """The command's options under their sections, in declaration order (``--help`` last)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    for param in command.get_params(ctx):
        if not isinstance(param, click.Option) or (title and param.name == "help"):  # help: the group's own
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        sections.setdefault(getattr(param, "section", "Options"), []).append(record)
    for name, records in sorted(sections.items(), key=lambda item: item[0] == "Options"):
        heading = f"{name} ({title})" if title and name != "Options" else name
        with formatter.section(heading):
            formatter.write_dl(records)


class SectionedCommand(click.Command):
    """A command whose ``--help`` groups its options by section."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        write_sections(self, ctx, formatter)


class PhaseList(click.ParamType):
    """``0,1`` -> ``[0, 1]``."""

    name = "N,M,..."

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            return [int(part) for part in str(value).split(",") if part.strip() != ""]
        except ValueError:
            self.fail(f"expected comma-separated phase numbers like 0,1, got {value!r}", param, ctx)


PHASE_CONTROL, STATE, OPTIONAL, INPUT, INTERACTIVE, FOLLOW = (
    "Phase control", "State management", "Optional phases", "Input and configuration",
    "Interactive checkpoints", "Following the run")
quiet_option = option("--quiet", "-q", is_flag=True, section=FOLLOW,
                      help="Print only errors on stderr; the JSON result still goes to stdout.")


def run_options(func: Callable) -> Callable:
    """Every flag of ``dispatch run``, as the guide names them."""
    decorators = [
        option("--only-phase", type=int, metavar="N", section=PHASE_CONTROL,
               help="Run only phase N (0-4). Phase 0 this way turns context gathering on; phase 4 needs a "
                    "state holding phase 3 (--load-phase-state)."),
        option("--stop-after-phase", type=int, metavar="N", section=PHASE_CONTROL,
               help="Run the selected phases up to phase N, then stop (phases 0 and 1 run only when "
                    "enabled)."),
        option("--skip-phases", type=PhaseList(), default=[], metavar="N,M,...", section=PHASE_CONTROL,
               help="Skip these phases (comma-separated, e.g. 0,1)."),
        option("--save-phase-state", metavar="FILE", section=STATE,
               help="Write the run's state to FILE (atomically) when the run ends."),
        option("--results-file", metavar="FILE", section=STATE,
               help="Also write one JSON line per task to FILE as tasks finish (a TaskResult each; the "
                    "tasks that never ran are added when the run ends)."),
        option("--load-phase-state", metavar="FILE", section=STATE,
               help="Start from a saved state: its context, quorum result and prepared tasks are reused, "
                    "its phases are not run again."),
        option("--enable-context", is_flag=True, section=OPTIONAL,
               help="Run phase 0: gather context for the tasks from the workspace (and the configured "
                    "retrievers)."),
        option("--enable-quorum", is_flag=True, section=OPTIONAL,
               help="Run phase 1: validators vote PASS / RETRY / FAIL on the breakdown; FAIL stops the run."),
        option("--input-file", "-f", metavar="FILE", section=INPUT,
               help="Read the task breakdown from FILE instead of stdin ('dispatch schema' prints its "
                    "shape)."),
        option("--config", metavar="FILE", section=INPUT,
               help="Config file naming agents, validators and retrievers: TOML, JSON or YAML (default: "
                    "$DISPATCH_CONFIG)."),
        option("--interactive", "-i", is_flag=True, section=INTERACTIVE,
               help="Stop at a checkpoint after each phase: approve, edit, retry, skip, batch-approve or "
                    "quit (quit saves a session)."),
        option("--resume-session", metavar="FILE", section=INTERACTIVE,
               help="Continue an interactive session saved by [q]uit, at its first undecided checkpoint."),
        option("--no-wait", is_flag=True, section=FOLLOW,
               help="With a broker: submit the run, print its id as JSON and return; follow it later "
                    "with 'dispatch wait RUN_ID'."),
        quiet_option,
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return func
