"""The smaller commands: ``schema``, ``report``, ``cancel``, ``help`` and ``completion``.

As in ``cli.run``, only click is imported at module level.
"""
from __future__ import annotations

import sys
from typing import Optional

import click

from dispatch.cli.options import COMPLETE_VAR, PROG, SectionedCommand, option, unknown_command_message


@click.command("schema", cls=SectionedCommand, short_help="Print the JSON Schema of the input.")
def schema() -> int:
    """Print the JSON Schema of the task breakdown the run command reads."""
    from dispatch.cli.io import emit
    from dispatch.pipeline.inputs import input_json_schema

    emit(input_json_schema())
    return 0


@click.command("report", cls=SectionedCommand, short_help="Write an HTML (or text) report of a run.")
@click.argument("source", metavar="RUN_ID|STATE_FILE")
@option("-o", "--output", metavar="FILE", section="Output",
        help="Where to write (html default: report-RUN_ID.html; text default: stdout, the one case where "
             "stdout carries text rather than JSON).")
@option("--format", "fmt", type=click.Choice(["html", "text"]), default="html", show_default=True,
        section="Output", help="A self-contained HTML page, or summary tables as plain text.")
def report(source: str, output: Optional[str], fmt: str) -> int:
    """Write a report of a run from a state file or a run id in the state store: a self-contained HTML
    page (timelines of the phases and of the tasks by worker, the critical path, quorum votes, context
    and output per task) or, with --format text, summary tables."""
    from pathlib import Path

    from dispatch.cli.log import Log
    from dispatch.config import Settings
    from dispatch.errors import UsageError
    from dispatch.report import render_html, render_text
    from dispatch.store.deployment import make_store
    from dispatch.store.state import load_state_file

    if Path(source).exists():
        state = load_state_file(source)
    else:
        looks_like_path = "/" in source or source.endswith(".json")
        store = None if looks_like_path else make_store(Settings.from_env())
        state = store.load(source) if store else None
        if state is None:
            where = f" ({store.describe()})" if store else ""
            raise UsageError(f"'{source}' is neither a state file nor a run id in the state store{where} "
                             "(see 'dispatch runs')")
    document = render_html(state) if fmt == "html" else render_text(state)
    if fmt == "text" and not output:
        sys.stdout.write(document)
        return 0
    path = Path(output or "report-{}.html".format("".join(c if c.isalnum() or c in "-_." else "_"
                                                          for c in state.run_id)))
    try:
        path.write_text(document, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write report ({exc.strerror or exc})") from None
    Log().ok(f"Report written to {path}")
    return 0


@click.command("cancel", cls=SectionedCommand, short_help="Cancel a run on the broker.")
@click.argument("run_id")
def cancel(run_id: str) -> int:
    """Cancel RUN_ID: queued tasks are dropped, running ones terminated (prefork workers; threads-pool tasks
    finish), agent tasks not yet started fail as cancelled, and the run is marked cancelled. It can be
    resumed later ('dispatch resume RUN_ID')."""
    from dataclasses import asdict

    from dispatch.cli.io import emit
    from dispatch.cli.log import Log
    from dispatch.config import Settings
    from dispatch.errors import UsageError

    settings = Settings.from_env()
    if settings.embedded:
        raise UsageError("cancel needs a broker (DISPATCH_BROKER_URL): an embedded run lives in the process "
                         "that started it; stop it there with Ctrl-C")
    from dispatch.runtime.client import Runner
    from dispatch.runtime.control import cancel_run

    runner = Runner(settings)
    app = runner.app
    outcome = cancel_run(run_id, runner.deployment,
                         lambda ids: app.control.revoke(ids, terminate=True, signal="SIGTERM"))
    emit(asdict(outcome))
    Log().warn(f"Run {outcome.run_id} cancelled (was {outcome.previous_status}; {outcome.revoked} task ids "
               f"revoked)")
    return 0


@click.command("help", short_help="Show the help of dispatch or of one command.")
@click.argument("command", required=False)
@click.pass_context
def help_(ctx: click.Context, command: Optional[str]) -> int:
    """Show the help of dispatch, or of COMMAND ('dispatch help show')."""
    root = ctx.find_root()
    group = root.command
    if not command:
        click.echo(group.get_help(root))
        return 0
    found = group.get_command(root, command)  # type: ignore[attr-defined]
    if found is None:
        raise click.UsageError(unknown_command_message(command, group.list_commands(root)), ctx)  # type: ignore
    click.echo(found.get_help(click.Context(found, info_name=command, parent=root)))
    return 0


SHELLS = ("bash", "zsh", "fish")


@click.command("completion", short_help="Print a shell completion script (bash, zsh, fish).")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> int:
    """Print the completion script for SHELL. Enable it with, e.g.:

    \b
      bash:  eval "$(dispatch completion bash)"     (in ~/.bashrc)
      zsh:   eval "$(dispatch completion zsh)"      (in ~/.zshrc)
      fish:  dispatch completion fish > ~/.config/fish/completions/dispatch.fish
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # the choice above lists only shells click supports
    click.echo(cls(ctx.find_root().command, {}, PROG, COMPLETE_VAR).source())
    return 0
