"""``dispatch runs`` and ``dispatch show``: the run history as a person reads it, or as JSON with ``--json``.

A table is the default because these two are what a person types to find out
what happened; scripts ask for ``--json`` (``show --json`` is the whole saved
state, as before).  The summary of one run is the report's text form
(``dispatch.report.render_text``), so ``show`` and ``report --format text``
never disagree.
"""
from __future__ import annotations

from typing import Any

import click

from dispatch.cli.options import SectionedCommand, option

json_option = option("--json", "as_json", is_flag=True, section="Output",
                     help="Print JSON for scripts instead of the table.")


def run_row(state: Any) -> dict[str, Any]:
    from dispatch.report.common import run_wall_ms, task_counts

    counts = task_counts(state)
    wall = run_wall_ms(state)
    return {"run_id": state.run_id, "started_at": state.started_at, "status": state.status,
            "phases": [r.phase.number for r in state.phases_executed if not r.skipped],
            "duration_ms": round(sum(r.duration_ms for r in state.phases_executed), 1),
            "wall_ms": None if wall is None else round(wall, 1),
            "tasks": {"total": len(state.tasks_data), "succeeded": counts["success"],
                      "failed": counts["failed"], "skipped": counts["skipped"]}}


@click.command("runs", cls=SectionedCommand, short_help="List recent runs from the state store.")
@option("--limit", type=click.IntRange(min=1), default=20, show_default=True, section="Output",
        help="How many runs to list, newest first.")
@json_option
def runs(limit: int, as_json: bool) -> int:
    """List recent runs, newest first: id, start, status, phases run, wall time, tasks."""
    from dispatch.cli.io import emit
    from dispatch.common.text import one_line, text_table
    from dispatch.config import Settings
    from dispatch.report.common import fmt_ms
    from dispatch.store.deployment import make_store

    store = make_store(Settings.from_env())
    rows = [run_row(state) for state in store.list_runs(limit)]
    if as_json:
        emit({"runs": rows})
        return 0
    if not rows:
        click.echo(f"No runs in {store.describe()}.")
        return 0
    table = [[one_line(r["run_id"], 40), (r["started_at"] or "-").replace("T", " ")[:19], r["status"],
              ",".join(map(str, r["phases"])) or "-", fmt_ms(r["wall_ms"]),
              f"{r['tasks']['succeeded']}/{r['tasks']['total']}"
              + (f" ({r['tasks']['failed']} failed)" if r["tasks"]["failed"] else "")] for r in rows]
    lines = text_table(["RUN ID", "STARTED (UTC)", "STATUS", "PHASES", "WALL", "TASKS OK"], table,
                       right=(4,), indent="")
    click.echo("\n".join(lines))
    click.echo(f"\n{len(rows)} run{'s' if len(rows) != 1 else ''} from {store.describe()}; "
               f"'dispatch show RUN_ID' for one run, --json for scripts.", err=True)
    return 0


SHOW_TASKS = 50  # beyond this, show sums up the rest: the report and --json have them all


@click.command("show", cls=SectionedCommand, short_help="Summarise one run: phases, tasks, outputs.")
@click.argument("run_id")
@json_option
def show(run_id: str, as_json: bool) -> int:
    """Summarise RUN_ID: its status, each phase with its duration, each task with its status, duration,
    worker and the first line of its output or error. --json prints the whole saved state."""
    from dispatch.cli.io import emit
    from dispatch.config import Settings
    from dispatch.errors import UsageError
    from dispatch.report import render_text
    from dispatch.store.deployment import make_store

    store = make_store(Settings.from_env())
    state = store.load(run_id)
    if state is None:
        raise UsageError(f"no run '{run_id}' in {store.describe()} (see 'dispatch runs')")
    if as_json:
        emit(state.model_dump(mode="json"))
        return 0
    click.echo(render_text(state, max_tasks=SHOW_TASKS), nl=False)
    click.echo(f"\nMore: 'dispatch show {run_id} --json' (the whole state), "
               f"'dispatch report {run_id}' (an HTML timeline with every task's output).", err=True)
    return 0
