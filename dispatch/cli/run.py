"""The commands that run a breakdown or follow a run: ``run`` (the default), ``wait``, ``resume``.

Each gets a state its own way and hands it to ``cli.execute.execute``, so the
log, the JSON on stdout and the exit code are the same for all three.  Only
click and the option declarations are imported at module level: the pipeline,
pydantic and Celery load when a command actually runs, so ``--help`` is fast.
"""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, Optional

import click

from dispatch.cli.options import PHASES, PhaseList, SectionedCommand, option, quiet_option, run_options


RUN_HELP = f"""Run a task breakdown (JSON on stdin or -f FILE) as parallel agent tasks, phase by phase.

Phases: {"; ".join(PHASES)}. Phases 2-4 always run, 0 and 1 when enabled. The
JSON result goes to stdout, the log to stderr. Exit codes: 0 success, 1 a run
that failed, 2 bad usage or input.

\b
Examples:
  dispatch --skip-phases 0,1 < tasks.json
  dispatch --only-phase 0 --enable-context --save-phase-state context_debug.json < tasks.json
  dispatch --stop-after-phase 3 --save-phase-state s.json -f tasks.json
  dispatch --load-phase-state s.json --only-phase 4
  dispatch --results-file results.jsonl -f tasks.json   (one line per task as it finishes)
"""


@click.command("run", cls=SectionedCommand, help=RUN_HELP, short_help="Run a task breakdown (the default command).")
@run_options
def run(**flags: Any) -> int:
    return run_breakdown(SimpleNamespace(**flags))


def run_breakdown(args: SimpleNamespace) -> int:
    from dispatch.cli.execute import execute, invoked_as, make_runner, report_prepared
    from dispatch.cli.io import read_input
    from dispatch.cli.log import Log
    from dispatch.config import DispatchConfig, Settings
    from dispatch.errors import UsageError
    from dispatch.models import PhaseConfig
    from dispatch.pipeline.prepare import prepare_state
    from dispatch.store.state import load_state_file

    log = Log(quiet=args.quiet)
    t0 = time.perf_counter()
    settings = Settings.from_env()
    # a loaded state keeps the config it was planned with, unless one is given again
    config_file = args.config or (None if args.load_phase_state else settings.config_file)
    config = DispatchConfig.load(config_file) if config_file or not args.load_phase_state else None
    cfg = PhaseConfig(only_phase=args.only_phase, stop_after_phase=args.stop_after_phase,
                      skip_phases=args.skip_phases, enable_context=args.enable_context,
                      enable_quorum=args.enable_quorum, interactive=args.interactive)
    if args.results_file and (args.interactive or args.resume_session):
        raise UsageError("--results-file is not available with --interactive: each checkpoint shows the "
                         "results, and --save-phase-state keeps them")
    if args.interactive or args.resume_session:
        from dispatch.cli.interactive.run import run_interactive

        return run_interactive(args, cfg, settings, config, log, invoked_as())
    if args.no_wait and settings.embedded:
        raise UsageError("--no-wait needs a broker (set DISPATCH_BROKER_URL): the embedded worker lives "
                         "only as long as this command")
    results = open_results(args.results_file, args.no_wait)
    loaded = load_state_file(args.load_phase_state) if args.load_phase_state else None
    request = read_input(args.input_file, args.load_phase_state)
    prepared = prepare_state(request, cfg, config, loaded)
    del request, loaded  # the run's state has what it needs: a 100k-task input is not held through the run
    report_prepared(prepared, log)
    return execute(make_runner(settings, log, results), prepared.state, log, t0, wait=not args.no_wait,
                   save_to=args.save_phase_state, results=results)


def open_results(path: Optional[str], no_wait: bool) -> Any:
    """The ``--results-file`` to write, opened now so a bad path is refused before anything runs."""
    if not path:
        return None
    from dispatch.cli.results_file import ResultsFile
    from dispatch.errors import UsageError

    if no_wait:
        raise UsageError("--results-file needs the run followed: drop --no-wait, or give --results-file to "
                         "'dispatch wait RUN_ID'")
    return ResultsFile(path)


results_option = option("--results-file", metavar="FILE", section="State management",
                        help="Also write one JSON line per task to FILE as tasks finish.")


@click.command("wait", cls=SectionedCommand, short_help="Follow a run started elsewhere until it ends.")
@click.argument("run_id")
@option("--save-phase-state", metavar="FILE", section="State management",
        help="Write the run's final state to FILE (atomically).")
@results_option
@quiet_option
def wait(run_id: str, save_phase_state: Optional[str], results_file: Optional[str], quiet: bool) -> int:
    """Follow RUN_ID (started with --no-wait, or from another machine) with the same progress, log, JSON
    result and exit code as a run in the foreground. Needs the broker the run was submitted to."""
    from dispatch.cli.execute import execute, make_runner
    from dispatch.cli.log import Log
    from dispatch.config import Settings
    from dispatch.errors import UsageError

    log, t0 = Log(quiet=quiet), time.perf_counter()
    settings = Settings.from_env()
    if settings.embedded:
        raise UsageError("wait follows a run on a broker (set DISPATCH_BROKER_URL to the one it was "
                         "submitted to): an embedded run lives only in the process that started it")
    results = open_results(results_file, False)
    runner = make_runner(settings, log, results)
    attached = runner.attach(run_id)
    if attached is None:
        raise UsageError(f"no run '{run_id}' in {runner.store.describe()} (see 'dispatch runs')")
    state, phase_results = attached
    log.line(f"Following run {run_id} ({state.status}; phases {', '.join(map(str, state.selected_phases))})")
    return execute(runner, state, log, t0, save_to=save_phase_state, follow=phase_results, results=results)


@click.command("resume", cls=SectionedCommand, short_help="Continue a stored run under the same run id.")
@click.argument("run_id")
@option("--skip-phases", type=PhaseList(), default=[], metavar="N,M,...", section="Phase control",
        help="Do not run these phases.")
@option("--config", metavar="FILE", section="Input and configuration",
        help="Config file to use instead of the one saved with the run.")
@option("--force", is_flag=True, section="Phase control",
        help="Resume a run still marked pending or running (when its client and workers are gone).")
@option("--no-wait", is_flag=True, section="Following the run",
        help="Submit, print the run id as JSON, return (follow it with 'dispatch wait RUN_ID').")
@option("--max-cost-usd", type=float, metavar="USD", section="Budget",
        help="Raise (or set) the run's [budget] max_cost_usd, e.g. after it paused at it.")
@option("--max-tokens", type=int, metavar="N", section="Budget", help="Raise (or set) the run's max_tokens.")
@option("--max-wall-s", type=float, metavar="S", section="Budget",
        help="Raise (or set) the run's max_wall_s (counted from the run's start).")
@results_option
@quiet_option
def resume(run_id: str, skip_phases: list[int], config: Optional[str], force: bool, no_wait: bool,
           max_cost_usd: Optional[float], max_tokens: Optional[int], max_wall_s: Optional[float],
           results_file: Optional[str], quiet: bool) -> int:
    """Continue RUN_ID from the state store, under the same run id: the phases after its last completed one
    run, the saved ones are kept (no state file needed). In phase 4 only the tasks that did not succeed
    run again."""
    from dispatch.cli.execute import execute, make_runner, report_prepared
    from dispatch.cli.log import Log
    from dispatch.config import DispatchConfig, Settings
    from dispatch.errors import UsageError
    from dispatch.pipeline.prepare import resume_state
    from dispatch.pipeline.spend import raise_caps

    log, t0 = Log(quiet=quiet), time.perf_counter()
    settings = Settings.from_env()
    if no_wait and settings.embedded:
        raise UsageError("--no-wait needs a broker (set DISPATCH_BROKER_URL)")
    results = open_results(results_file, no_wait)
    runner = make_runner(settings, log, results)
    store = runner.store
    stored = store.load(run_id)
    if stored is None:
        raise UsageError(f"no run '{run_id}' in {store.describe()} (see 'dispatch runs')")
    prepared = resume_state(stored, skip_phases, DispatchConfig.load(config) if config else None, force=force)
    state = prepared.state
    report_prepared(prepared, log)
    for change in raise_caps(state, max_cost_usd=max_cost_usd, max_tokens=max_tokens, max_wall_s=max_wall_s):
        log.line(f"Budget: {change}")
    if not settings.embedded:
        runner.deployment.clear_cancel(state.run_id)
    log.line(f"Resuming run {state.run_id} with phases {', '.join(map(str, state.selected_phases))}")
    return execute(runner, state, log, t0, wait=not no_wait, results=results)
