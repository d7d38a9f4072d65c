"""``dispatch quorum stats``: each validator's record over the saved runs, a table or ``--json``.

The record is computed from the run history (``dispatch.quorum.stats``, pure), so
it needs no store of its own: what a validator voted and how the run went are
both in every saved state.
"""
from __future__ import annotations

import click

from dispatch.cli.history import json_option
from dispatch.cli.options import SectionedCommand, option


@click.group("quorum", short_help="The quorum's record: how each validator voted and how it turned out.")
def quorum() -> None:
    """The quorum's record over saved runs."""


@quorum.command("stats", cls=SectionedCommand, short_help="Per validator: votes, agreement, PASS then failed.")
@option("--limit", type=click.IntRange(min=1), default=50, show_default=True, section="Output",
        help="How many recent runs to read, newest first.")
@json_option
def stats(limit: int, as_json: bool) -> int:
    """Per validator: votes, abstentions, agreement with the final decision, how often a PASS was followed
    by failed tasks, edits at checkpoints after the quorum, tokens."""
    from dispatch.cli.io import emit
    from dispatch.config import Settings
    from dispatch.quorum.stats import quorum_stats, render_stats, stats_json
    from dispatch.store.deployment import make_store

    result = quorum_stats(make_store(Settings.from_env()).list_runs(limit))
    if as_json:
        emit(stats_json(result))
    else:
        click.echo("\n".join(render_stats(result)))
    return 0
