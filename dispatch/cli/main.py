"""dispatch: run a task breakdown as parallel agent tasks on Celery, phase by phase.

    python cli.py [phase flags] < tasks.json        (or the `dispatch` console script)
    python cli.py schema | runs | show RUN_ID | resume RUN_ID | cancel RUN_ID

JSON results go to stdout only; the log goes to stderr.  Exit codes: 0 success,
1 a run that failed, 2 bad usage or input.  Modules that import Celery are
imported inside the commands that need them, so ``--help`` and ``schema``
start fast.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Optional, Sequence

from dispatch.cli.io import emit, read_input
from dispatch.cli.log import Log
from dispatch.config import DispatchConfig, Settings
from dispatch.errors import DispatchError, UsageError

PHASES_HELP = "0 Context Gathering, 1 Quorum Validation, 2 Task Planning, 3 Context Filtering, 4 Parallel Execution"


def phase_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated phase numbers like 0,1, got {text!r}") from None


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dispatch", description="Run a task breakdown as parallel AI-agent tasks on Celery, phase by phase. "
        f"Phases: {PHASES_HELP}.",
        epilog="Other commands: 'dispatch schema' prints the input JSON Schema; 'dispatch runs' lists recent runs; "
               "'dispatch show RUN_ID' prints a run's state; 'dispatch report RUN_ID|STATE_FILE' writes an HTML "
               "timeline; 'dispatch resume RUN_ID' continues a run from the store; 'dispatch cancel RUN_ID' stops "
               "one. Environment: DISPATCH_BROKER_URL (unset: embedded "
               "in-process worker), DISPATCH_RESULT_BACKEND, DISPATCH_STATE_URL, DISPATCH_STATE_DIR, DISPATCH_CONFIG.")
    g = p.add_argument_group("phase control")
    g.add_argument("--only-phase", type=int, metavar="N", help="execute only phase N (0-4)")
    g.add_argument("--stop-after-phase", type=int, metavar="N", help="execute phases 0-N, then stop")
    g.add_argument("--skip-phases", type=phase_list, default=[], metavar="N,M,...",
                   help="skip the listed phases (comma-separated)")
    g = p.add_argument_group("state management")
    g.add_argument("--save-phase-state", metavar="FILE", help="save phase state to a JSON file")
    g.add_argument("--load-phase-state", metavar="FILE", help="load phase state from a JSON file")
    g = p.add_argument_group("existing flags (backward compatible)")
    g.add_argument("--enable-context", action="store_true", help="enable phase 0 (context gathering)")
    g.add_argument("--enable-quorum", action="store_true", help="enable phase 1 (quorum validation)")
    g.add_argument("--interactive", "-i", action="store_true", help="enable interactive checkpoints")
    g.add_argument("--input-file", "-f", metavar="FILE", help="read input from a JSON file (default: stdin)")
    g.add_argument("--resume-session", metavar="FILE", help="resume an interactive session")
    g = p.add_argument_group("deployment")
    g.add_argument("--config", metavar="FILE", help="config file (JSON or TOML) for agents, validators, "
                   "retrievers (default: $DISPATCH_CONFIG)")
    g.add_argument("--no-wait", action="store_true", help="distributed mode: submit, print the run id, return")
    g.add_argument("--quiet", "-q", action="store_true", help="no log on stderr (the JSON result still prints)")
    return p


def invoked_as() -> str:
    """``python cli.py`` or ``dispatch``: how to show a command the user can type again."""
    import shlex

    argv0 = sys.argv[0] if sys.argv else ""
    return f"python {shlex.quote(argv0)}" if argv0.endswith(".py") else "dispatch"


def stored_or(runner, state):
    """The run's stored state, or ``state`` when the store cannot be reached (Redis down)."""
    from dispatch.runtime.connection import connection_errors

    try:
        return runner.store.load(state.run_id) or state
    except connection_errors():
        return state


def run_command(argv: Sequence[str]) -> int:
    from dispatch.models import PhaseConfig
    from dispatch.pipeline.prepare import prepare_state
    from dispatch.store.state import load_state_file

    args = run_parser().parse_args(argv)
    log = Log(quiet=args.quiet)
    t0 = time.perf_counter()
    settings = Settings.from_env()
    # a loaded state keeps the config it was planned with, unless one is given again
    config_file = args.config or (None if args.load_phase_state else settings.config_file)
    config = DispatchConfig.load(config_file) if config_file or not args.load_phase_state else None
    cfg = PhaseConfig(only_phase=args.only_phase, stop_after_phase=args.stop_after_phase,
                      skip_phases=args.skip_phases, enable_context=args.enable_context,
                      enable_quorum=args.enable_quorum, interactive=args.interactive)
    if args.interactive or args.resume_session:
        from dispatch.cli.interactive.run import run_interactive

        return run_interactive(args, cfg, settings, config, log, invoked_as())
    if args.no_wait and settings.embedded:
        raise UsageError("--no-wait needs a broker (set DISPATCH_BROKER_URL): the embedded worker lives "
                         "only as long as this command")
    loaded = load_state_file(args.load_phase_state) if args.load_phase_state else None
    request = read_input(args.input_file, args.load_phase_state)
    prepared = prepare_state(request, cfg, config, loaded)
    report_prepared(prepared, log)
    return execute(make_runner(settings, log), prepared.state, log, t0, wait=not args.no_wait,
                   save_to=args.save_phase_state)


def report_prepared(prepared, log: Log) -> None:
    for warning in prepared.warnings:
        log.warn(warning)
    for note in prepared.notes:
        log.line(note)


def make_runner(settings: Settings, log: Log):
    from dispatch.cli.follow import LogObserver
    from dispatch.runtime.client import Runner

    return Runner(settings, LogObserver(log, settings))


def execute(runner, state, log: Log, t0: float, wait: bool = True, save_to: Optional[str] = None) -> int:
    """Run (or submit) a prepared state; print the JSON result; the exit code says how it went."""
    from dispatch.pipeline.output import build_output
    from dispatch.store.state import save_state_file

    try:
        final = runner.run(state, wait=wait)
    except KeyboardInterrupt:
        log.warn(f"interrupted; run {state.run_id} may still be running on the workers")
        return 130
    except DispatchError as exc:
        log.fail(str(exc))
        saved = stored_or(runner, state)
        if save_to:
            save_state_file(saved, save_to)
        emit(build_output(saved, (time.perf_counter() - t0) * 1000, save_to, error=str(exc)).model_dump(mode="json"))
        return 1
    if final is None:
        emit({"run_id": state.run_id, "status": "submitted", "phases": state.selected_phases})
        log.line(f"Run {state.run_id} submitted; follow it with: dispatch show {state.run_id}")
        return 0
    if save_to:
        save_state_file(final, save_to)
        log.ok(f"Phase state saved to {save_to}")
    output = build_output(final, (time.perf_counter() - t0) * 1000, save_to)
    emit(output.model_dump(mode="json"))
    if not output.success:
        log.fail(f"Run {final.run_id} {final.status}" + (f": {output.error}" if output.error else ""))
    return 0 if output.success else 1


def schema_command(argv: Sequence[str]) -> int:
    from dispatch.pipeline.inputs import input_json_schema

    argparse.ArgumentParser(prog="dispatch schema", description="Print the JSON Schema of the input").parse_args(argv)
    emit(input_json_schema())
    return 0


def runs_command(argv: Sequence[str]) -> int:
    from dispatch.store.deployment import make_store

    p = argparse.ArgumentParser(prog="dispatch runs", description="List recent runs from the state store")
    p.add_argument("--limit", type=int, default=20)
    args = p.parse_args(argv)
    rows = []
    for state in make_store(Settings.from_env()).list_runs(args.limit):
        rows.append({"run_id": state.run_id, "started_at": state.started_at, "status": state.status,
                     "phases": [r.phase.number for r in state.phases_executed if not r.skipped],
                     "duration_ms": round(sum(r.duration_ms for r in state.phases_executed), 1)})
    emit({"runs": rows})
    return 0


def show_command(argv: Sequence[str]) -> int:
    from dispatch.store.deployment import make_store

    p = argparse.ArgumentParser(prog="dispatch show", description="Print a run's saved state")
    p.add_argument("run_id")
    args = p.parse_args(argv)
    store = make_store(Settings.from_env())
    state = store.load(args.run_id)
    if state is None:
        raise UsageError(f"no run '{args.run_id}' in {store.describe()} (see 'dispatch runs')")
    emit(state.model_dump(mode="json"))
    return 0


def report_command(argv: Sequence[str]) -> int:
    from pathlib import Path

    from dispatch.report import render_html, render_text
    from dispatch.store.deployment import make_store
    from dispatch.store.state import load_state_file

    p = argparse.ArgumentParser(prog="dispatch report", description="Write a report of a run: a self-contained "
                                "HTML page (timelines of phases and tasks by worker, critical path, quorum votes, "
                                "context per task) or, with --format text, summary tables on stdout.")
    p.add_argument("source", metavar="RUN_ID|STATE_FILE", help="a state file, or a run id in the state store")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write (html default: report-RUN_ID.html; "
                   "text default: stdout, the one case where stdout carries text rather than JSON)")
    p.add_argument("--format", choices=["html", "text"], default="html", help="html (default) or text")
    args = p.parse_args(argv)
    if Path(args.source).exists():
        state = load_state_file(args.source)
    else:
        looks_like_path = "/" in args.source or args.source.endswith(".json")
        state = None if looks_like_path else make_store(Settings.from_env()).load(args.source)
        if state is None:
            raise UsageError(f"'{args.source}' is neither a state file nor a run id in the state store "
                             "(see 'dispatch runs')")
    document = render_html(state) if args.format == "html" else render_text(state)
    if args.format == "text" and not args.output:
        sys.stdout.write(document)
        return 0
    output = Path(args.output or "report-{}.html".format("".join(c if c.isalnum() or c in "-_." else "_"
                                                                  for c in state.run_id)))
    try:
        output.write_text(document, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{output}: cannot write report ({exc.strerror or exc})") from None
    Log().ok(f"Report written to {output}")
    return 0


def resume_command(argv: Sequence[str]) -> int:
    from dispatch.pipeline.prepare import resume_state

    p = argparse.ArgumentParser(prog="dispatch resume", description="Continue a run from the state store, under "
                                "the same run id: the phases after its last completed one run, the saved ones "
                                "are kept (no state file needed)")
    p.add_argument("run_id")
    p.add_argument("--skip-phases", type=phase_list, default=[], metavar="N,M,...", help="do not run these phases")
    p.add_argument("--config", metavar="FILE", help="config file to use instead of the one saved with the run")
    p.add_argument("--force", action="store_true", help="resume a run still marked pending or running "
                   "(when its client and workers are gone)")
    p.add_argument("--no-wait", action="store_true", help="submit, print the run id, return")
    p.add_argument("--quiet", "-q", action="store_true", help="no log on stderr")
    args = p.parse_args(argv)
    log, t0 = Log(quiet=args.quiet), time.perf_counter()
    settings = Settings.from_env()
    if args.no_wait and settings.embedded:
        raise UsageError("--no-wait needs a broker (set DISPATCH_BROKER_URL)")
    runner = make_runner(settings, log)
    store = runner.store
    stored = store.load(args.run_id)
    if stored is None:
        raise UsageError(f"no run '{args.run_id}' in {store.describe()} (see 'dispatch runs')")
    config = DispatchConfig.load(args.config) if args.config else None
    prepared = resume_state(stored, args.skip_phases, config, force=args.force)
    state = prepared.state
    report_prepared(prepared, log)
    if not settings.embedded:
        runner.deployment.clear_cancel(state.run_id)
    log.line(f"Resuming run {state.run_id} with phases {', '.join(map(str, state.selected_phases))}")
    return execute(runner, state, log, t0, wait=not args.no_wait)


def cancel_command(argv: Sequence[str]) -> int:
    from dataclasses import asdict

    from dispatch.runtime.client import Runner
    from dispatch.runtime.control import cancel_run

    p = argparse.ArgumentParser(prog="dispatch cancel", description="Cancel a run: queued tasks are dropped, "
                                "running ones terminated (prefork workers; threads-pool tasks finish), agent "
                                "tasks not yet started fail as cancelled, and the run is marked cancelled")
    p.add_argument("run_id")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    if settings.embedded:
        raise UsageError("cancel needs a broker (DISPATCH_BROKER_URL): an embedded run lives in the process "
                         "that started it; stop it there with Ctrl-C")
    log = Log()
    runner = Runner(settings)
    app = runner.app
    outcome = cancel_run(args.run_id, runner.deployment,
                         lambda ids: app.control.revoke(ids, terminate=True, signal="SIGTERM"))
    emit(asdict(outcome))
    log.warn(f"Run {outcome.run_id} cancelled (was {outcome.previous_status}; {outcome.revoked} task ids revoked)")
    return 0


COMMANDS = {"schema": schema_command, "runs": runs_command, "show": show_command, "report": report_command,
            "resume": resume_command, "cancel": cancel_command}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = COMMANDS.get(argv[0]) if argv else None
    try:
        return command(argv[1:]) if command else run_command(argv)
    except DispatchError as exc:
        Log().fail(str(exc))
        return exc.exit_code
    except Exception as exc:
        from dispatch.runtime.connection import connection_errors

        if not isinstance(exc, connection_errors()):
            raise
        Log().fail(f"cannot reach the broker or Redis ({type(exc).__name__}: {exc})")
        return 1


if __name__ == "__main__":
    sys.exit(main())
