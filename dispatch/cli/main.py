"""dispatch's command tree: ``dispatch [run] [flags] < tasks.json`` and the commands beside it.

A click group whose default command is ``run``: with no command, or when the
first argument is a flag, the arguments go to ``run``, so every example of the
guide (``python cli.py --skip-phases 0,1 < tasks.json``) works unchanged.  A
word that is no command is a typo (``run`` takes no positional argument) and
is answered with the closest commands.

Errors are ours to print: click runs with ``standalone_mode=False`` and
``main`` turns its usage errors and dispatch's own errors into one
``[DispatchRunner] ✗`` line on stderr and the exit code (2 usage or input,
1 a run that failed), never a traceback.  Modules that import pydantic or
Celery load inside the commands that need them, so ``--help`` starts fast.

Adding a command from another module is one line: ``cli.add_command(cmd)``,
or an entry in ``LAZY_COMMANDS`` to import it only when it is used.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Optional, Sequence

import click

from dispatch.cli.history import runs, show
from dispatch.cli.options import ENVIRONMENT, PROG, unknown_command_message, write_sections
from dispatch.cli.run import resume, run, wait
from dispatch.cli.tools import cancel, completion, help_, report, schema
from dispatch.errors import DispatchError

# commands defined elsewhere, imported only when used: name -> ("module:attribute", one-line help)
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "mcp": ("dispatch.mcp_server:mcp_command", "serve dispatch to coding agents over the Model Context Protocol"),
    "quorum": ("dispatch.cli.quorum:quorum", "the quorum's record: how each validator voted (quorum stats)"),
    "apply": ("dispatch.cli.changes:apply", "merge a run's integration branch into your current branch"),
    "diff": ("dispatch.cli.changes:diff", "print the patch of a run's task, or of its whole integration"),
}
GROUP_FLAGS = ("--help", "-h", "--version")
EPILOG = (f"With no command, '{PROG}' is '{PROG} run'. '{PROG} help COMMAND' shows a command's flags. "
          f"Environment: {ENVIRONMENT} Exit codes: 0 success, 1 a run that failed, 2 bad usage or input.")


class DispatchGroup(click.Group):
    """``run`` by default, commands in the order they were added, did-you-mean, lazily imported extras."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # completing the first word (resilient parsing, nothing typed yet) offers the commands, not run's
        empty = not args and not ctx.resilient_parsing
        if empty or (args and args[0].startswith("-") and args[0] not in GROUP_FLAGS):
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list:
        """``dispatch --sto<TAB>``: the default command's flags too."""
        found = super().shell_complete(ctx, incomplete)
        if incomplete.startswith("-"):
            default = self.commands["run"]
            found += default.shell_complete(click.Context(default, info_name="run", parent=ctx), incomplete)
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands) + [name for name in LAZY_COMMANDS if name not in self.commands]

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        if name not in self.commands and name in LAZY_COMMANDS:
            import importlib

            module, _, attribute = LAZY_COMMANDS[name][0].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return self.commands.get(name)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0]
        if name not in self.commands and name not in LAZY_COMMANDS and not name.startswith("-"):
            raise click.UsageError(unknown_command_message(name, self.list_commands(ctx)), ctx)
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, LAZY_COMMANDS[name][1] if name not in self.commands
                 else self.commands[name].get_short_help_str(limit=70)) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_options(ctx, formatter)
        default = self.commands["run"]
        write_sections(default, click.Context(default, info_name="run", parent=ctx), formatter,
                       title=f"{PROG} run")


@click.group(cls=DispatchGroup, name=PROG, epilog=EPILOG, subcommand_metavar="[COMMAND] [ARGS]...",
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="dispatch", prog_name=PROG, message="%(prog)s %(version)s")
def cli() -> None:
    """Run a task breakdown as parallel AI-agent tasks on Celery, phase by phase (0 Context Gathering,
    1 Quorum Validation, 2 Task Planning, 3 Context Filtering, 4 Parallel Execution)."""


for command in (run, runs, show, wait, report, resume, cancel, schema, help_, completion):
    cli.add_command(command)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console script and ``python cli.py``: the exit code, every error as one line on stderr."""
    args = list(sys.argv[1:] if argv is None else argv)
    if argv is None:  # this process's own command line (not a caller running a command in-process)
        prestart_embedded_redis(args)
    try:
        code = cli.main(args=args, prog_name=PROG, standalone_mode=False)
        code = code if isinstance(code, int) else 0
        exit_past_abandoned_phases(code)
        return code
    except click.UsageError as exc:
        return usage_failed(exc)
    except click.ClickException as exc:
        fail(exc.format_message())
        return exc.exit_code
    except click.Abort:
        fail("interrupted")
        return 130
    except DispatchError as exc:
        fail(str(exc))
        return exc.exit_code
    except Exception as exc:
        from dispatch.runtime.connection import connection_errors, full_redis_message, is_full_redis

        if is_full_redis(exc):
            from dispatch.config import Settings

            fail(full_redis_message(Settings.from_env()))
            return 1
        if not isinstance(exc, connection_errors()):
            raise
        fail(f"cannot reach the broker or Redis ({type(exc).__name__}: {exc})")
        return 1


RUN_COMMANDS = ("run", "resume")  # the commands that run phases in this process when embedded


def prestart_embedded_redis(args: list[str]) -> None:
    """An embedded run (no broker) needs its private ``redis-server``: start it now, in the background,
    so it comes up while the run imports Celery instead of after (``runtime/embedded_server.py``)."""
    if os.environ.get("DISPATCH_BROKER_URL"):
        return
    default = not args or (args[0].startswith("-") and args[0] not in GROUP_FLAGS)
    if not (default or args[0] in RUN_COMMANDS) or any(a in ("--help", "-h") for a in args):
        return
    from dispatch.runtime.embedded_server import prestart

    prestart()


def exit_past_abandoned_phases(code: int) -> None:
    """A phase past its timeout may leave a thread blocked (a read that never returns) that Python
    would join at exit, forever: the run's outcome is written, so the process ends here instead."""
    phases = sys.modules.get("dispatch.pipeline.phases")  # not imported: no phase ran in this process
    if phases is not None and phases.abandoned_bodies():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def fail(text: str) -> None:
    from dispatch.cli.log import FAIL, PREFIX

    sys.stderr.write(f"{PREFIX} {FAIL} {text}\n")
    sys.stderr.flush()


def usage_failed(exc: click.UsageError) -> int:
    """click's usage errors in our form: what is wrong, then where the help is."""
    fail(exc.format_message())
    if exc.ctx is not None:
        from dispatch.cli.log import PREFIX

        path = exc.ctx.command_path
        sys.stderr.write(f"{PREFIX} usage: {exc.ctx.get_usage().removeprefix('Usage: ')}; "
                         f"see '{path} --help'\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
