"""Human in the loop: ``--interactive/-i`` checkpoints and ``--resume-session FILE``.

Each phase is its own chain submission (``Runner.run`` with one selected
phase) so that between phases nothing runs and nothing holds a worker while a
human decides; the run keeps one run id throughout.  After each phase (and
before phase 4 when phase 3 did not run) a checkpoint shows what the phase
produced and asks: approve, edit, retry, skip, batch-approve the rest, or quit.

What a human decides is applied to the ``PhaseState`` itself, which is what the
next submission carries, so an edit reaches every later phase.  After phase 4
of a run with git workspaces, edit is the list of tasks whose changes the
integration branch keeps: dropping one rebuilds the branch without it.  The
session file (``session.py``) is rewritten after every step.

The terminal is opened directly (``/dev/tty``): the task breakdown may be
arriving on stdin, stdout carries only the JSON result, and the log goes to
stderr.  No terminal means no one to ask, which is a usage error.
"""
from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any, Optional

from dispatch.cli.execute import make_runner
from dispatch.cli.interactive.editor import EDIT_HELP, Editor, validate_context, validate_integration, validate_tasks
from dispatch.cli.interactive.session import Checkpoint, Decision, Session, SessionFlags
from dispatch.cli.interactive.terminal import Terminal
from dispatch.cli.interactive.view import checkpoint_lines, integration_edit_header
from dispatch.cli.io import emit, read_input
from dispatch.cli.log import Log
from dispatch.config import DispatchConfig, Settings
from dispatch.errors import DispatchError, UsageError
from dispatch.models import ExecutionPhase, GlobalContext, PhaseConfig, PhaseResult, PhaseState
from dispatch.pipeline import status
from dispatch.pipeline.output import build_output
from dispatch.pipeline.prepare import prepare_state
from dispatch.pipeline.status import is_critical_failure
from dispatch.pipeline.workspace_run import integration_candidates, rebuild_integration
from dispatch.runtime.client import Runner
from dispatch.store.state import load_state_file, save_state_file
from dispatch.workspace import WorkspaceError

ACTIONS = {"a": "approve", "e": "edit", "r": "retry", "s": "skip", "b": "batch-approve", "q": "quit"}
LABELS = {"a": "[a]pprove", "e": "[e]dit", "r": "[r]etry", "s": "[s]kip", "b": "[b]atch-approve the rest",
          "q": "[q]uit"}
SKIP_REASON = "skipped at the interactive checkpoint"
# Flags a resumed session must not be given: the session already fixes them.
FIXED_ON_RESUME = ("only_phase", "stop_after_phase", "skip_phases", "enable_context", "enable_quorum",
                   "input_file", "load_phase_state", "config")


def resume_command(path: Path, invoked_as: str = "dispatch") -> str:
    """How to resume, in the form this command was started with (``invoked_as``: e.g. ``python cli.py``)."""
    return f"{invoked_as} --resume-session {shlex.quote(str(path))}"


def run_interactive(args: Any, cfg: PhaseConfig, settings: Settings,
                    config: Optional[DispatchConfig], log: Log, invoked_as: str = "dispatch") -> int:
    """The CLI's entry for ``-i`` and ``--resume-session``: same exit codes and JSON result as a plain run."""
    if args.no_wait:
        raise UsageError("--interactive waits at every checkpoint; it cannot be combined with --no-wait")
    if args.resume_session:
        given = [name for name in FIXED_ON_RESUME if getattr(args, name, None) not in (None, False, [])]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise UsageError(f"--resume-session continues a session with the flags it started with; "
                             f"drop {flags}")
        session = Session.load(args.resume_session)  # a bad file is exit 2 before the terminal matters
        path = Path(args.resume_session).resolve()
    term = Terminal.open()
    try:
        if not args.resume_session:
            loaded = load_state_file(args.load_phase_state) if args.load_phase_state else None
            prepared = prepare_state(read_input(args.input_file, args.load_phase_state), cfg, config, loaded)
            for warning in prepared.warnings:
                log.warn(warning)
            state = prepared.state
            session = Session(run_id=state.run_id, phase_config=cfg, selected_phases=list(state.selected_phases),
                              state=state, flags=SessionFlags(
                                  input_file=args.input_file, load_phase_state=args.load_phase_state,
                                  save_phase_state=args.save_phase_state, config=args.config, quiet=args.quiet))
            path = (Path(settings.state_dir) / "sessions" / f"{state.run_id}.json").resolve()
            session.save(path)
            term.say(f"Interactive run {state.run_id}; session file: {path}")
        else:
            term.say(f"Resuming run {session.run_id} from {path}")
        save_file = args.save_phase_state or session.flags.save_phase_state
        return InteractiveRun(session, path, make_runner(settings, log), term, log,
                              save_file, invoked_as).run()
    finally:
        term.close()


class InteractiveRun:
    """Walks the session's checkpoints in order, running each phase just before its checkpoint."""

    def __init__(self, session: Session, path: Path, runner: Runner, term: Terminal, log: Log,
                 save_file: Optional[str], invoked_as: str = "dispatch") -> None:
        self.session = session
        self.path = path
        self.runner = runner
        self.term = term
        self.log = log
        self.save_file = save_file
        self.invoked_as = invoked_as
        self.config = session.state.config
        self.editor = Editor(term.writer, term.say)

    @property
    def state(self) -> PhaseState:
        return self.session.state

    def save(self) -> None:
        self.session.save(self.path)

    # ---------------------------------------------------------------- the walk
    def run(self) -> int:
        if self.session.status == "finished":
            self.term.say("This session has already finished; printing its result.")
            return self.finish()
        self.session.status = "open"
        try:
            while True:
                point = self.session.pending()
                if point is None:
                    return self.finish()
                if point.when == "after" and point.phase not in self.session.ran:
                    self.execute([point.phase])
                    if self.state.status == "cancelled":
                        return self.finish()
                outcome = self.checkpoint(point)
                if outcome == "quit":
                    return self.pause()
                if outcome == "stop":
                    return self.finish()
        except (KeyboardInterrupt, EOFError) as exc:
            self.term.say()
            return self.pause(130 if isinstance(exc, KeyboardInterrupt) else 0)
        except DispatchError as exc:  # a phase crashed on its worker: the session still holds the last good state
            if isinstance(exc, UsageError):
                raise
            self.log.fail(str(exc))
            self.save()
            self.term.say(f"Session saved; to retry from here: {resume_command(self.path, self.invoked_as)}")
            emit(build_output(self.state, self.session.run_ms, None, error=str(exc)).model_dump(mode="json"))
            return 1

    def execute(self, phases: list[int]) -> None:
        """One chain submission for ``phases``, on the run's one run id."""
        state = self.state
        if 1 in phases and self.session.tasks_before_quorum is None:  # the breakdown as it came in
            self.session.tasks_before_quorum = [t.model_copy(deep=True) for t in state.tasks_data]
        state.selected_phases = list(phases)
        status.resubmitted(state)
        t0 = time.perf_counter()
        try:
            final = self.runner.run(state)
        finally:
            self.session.run_ms += (time.perf_counter() - t0) * 1000
        assert final is not None  # run(wait=True) always returns the state
        self.session.state = final
        self.session.ran = sorted(set(self.session.ran) | set(phases))
        self.save()

    # ------------------------------------------------------------ checkpoints
    def checkpoint(self, point: Checkpoint) -> str:
        """Loop until the human approves, skips or quits: 'next', 'stop' (approved failure) or 'quit'."""
        while True:
            for line in checkpoint_lines(point.when, point.phase, self.state, self.term.columns):
                self.term.say(line)
            failed = self.failed(point)
            if self.session.batch:
                action, auto = "batch-approve", True
                self.term.say("→ approved (batch-approve)")
            else:
                action, auto = self.ask(point, failed), False
            if action in ("approve", "batch-approve"):
                self.session.batch = self.session.batch or action == "batch-approve"
                self.session.record(Decision(checkpoint=point.key, action=action, auto=auto))
                self.save()
                self.log.line(f"Checkpoint {point.key}: approved" + (" (batch)" if auto else ""))
                return "stop" if failed else "next"
            if action == "quit":
                self.session.record(Decision(checkpoint=point.key, action="quit"))
                return "quit"
            if action == "skip":
                self.skip(point)
                return "next"
            if action == "retry":
                self.retry(point)
            elif action == "edit":
                self.edit(point)

    def failed(self, point: Checkpoint) -> bool:
        result = self.state.result_for(ExecutionPhase.of(point.phase))
        return point.when == "after" and result is not None and is_critical_failure(result)

    def choices(self, point: Checkpoint) -> str:
        if point.when == "before":
            return "aesbq"  # nothing ran yet, so nothing to retry
        if point.phase == 4:  # the last phase: its results can be accepted or run again, and with git
            return "aerq" if self.state.integration is not None else "arq"  # workspaces changes dropped
        return "aersbq"

    def ask(self, point: Checkpoint, failed: bool) -> str:
        keys = self.choices(point)
        if failed:
            way_on = "skip goes on without it" if "s" in keys else "retry runs it again"
            self.term.say(f"This phase failed: approving ends the run as failed; {way_on}.")
        words = {ACTIONS[k]: k for k in keys} | {"batch": "b"}
        while True:
            answer = self.term.ask("  ".join(LABELS[k] for k in keys) + " > ").lower()
            key = words.get(answer, answer[:1] if len(answer) == 1 else "")
            if key and key in keys:
                return ACTIONS[key]
            self.term.say(f"Please answer one of: {', '.join(keys)}")

    def skip(self, point: Checkpoint) -> None:
        """Drop the phase's output as if it had not run, keeping any edit made here."""
        state, number = self.state, point.phase
        edited = any(d.action == "edit" for d in self.session.actions_at(point.key))
        if point.when == "after":
            if number == 0:
                state.global_context = None
            elif number == 1:
                state.quorum_result = None
                if not edited and self.session.tasks_before_quorum is not None:
                    state.tasks_data = self.session.tasks_before_quorum
            elif number == 2:
                state.plan = None
            elif number == 3:
                state.task_contexts = {}
        state.record(PhaseResult.skipped_result(ExecutionPhase.of(number), SKIP_REASON))
        status.resumed_after_retry(state)
        self.session.record(Decision(checkpoint=point.key, action="skip"))
        self.save()
        self.log.warn(f"Checkpoint {point.key}: phase {number} skipped")

    def retry(self, point: Checkpoint) -> None:
        feedback = None
        if point.phase == ExecutionPhase.QUORUM_VALIDATION.number:
            feedback = self.term.ask("Feedback for the validators and planner (Enter for none) > ") or None
            if feedback:
                self.state.input_extras["quorum_feedback"] = feedback
            else:
                self.state.input_extras.pop("quorum_feedback", None)
        self.log.line(f"Checkpoint {point.key}: retrying phase {point.phase}")
        self.execute([point.phase])
        self.session.record(Decision(checkpoint=point.key, action="retry", feedback=feedback, rerun=[point.phase]))
        self.save()

    # ------------------------------------------------------------------ edits
    def edit(self, point: Checkpoint) -> None:
        """Edit in $VISUAL/$EDITOR; a task-list edit re-runs the phases derived from it (2, 3)."""
        if point.when == "after" and point.phase == 4:
            return self.edit_integration(point)
        if point.when == "after" and point.phase == 0:
            target, header = "global_context", ["Phase 0's global context (a GlobalContext object)."]
            document: Any = (self.state.global_context or GlobalContext()).model_dump(mode="json")
            validate: Any = validate_context
        else:
            target, header = "tasks_data", ["The task breakdown: a JSON list of tasks "
                                            "(task_id, agent, description, dependencies, ...)."]
            document = [t.model_dump(mode="json") for t in self.state.tasks_data]
            validate = lambda raw: validate_tasks(raw, self.config)  # noqa: E731
        try:
            value = self.editor.edit(document, validate, target, header + EDIT_HELP)
        except UsageError as exc:  # no usable editor: say so and ask again, the session goes on
            self.term.say(f"✗ {exc}")
            return
        if value is None:
            return
        setattr(self.state, target, value)
        rerun = []
        if target == "tasks_data":
            rerun = [n for n in (2, 3) if n <= point.phase and self.state.has_completed(ExecutionPhase.of(n))]
        self.log.line(f"Checkpoint {point.key}: {target} edited" +
                      (f"; re-running phase {', '.join(map(str, rerun))} on the edit" if rerun else ""))
        if rerun:
            self.execute(rerun)
        dumped = [t.model_dump(mode="json") for t in value] if target == "tasks_data" else value.model_dump(mode="json")
        self.session.record(Decision(checkpoint=point.key, action="edit", target=target, value=dumped, rerun=rerun))
        self.save()

    def edit_integration(self, point: Checkpoint) -> None:
        """After phase 4 in a git workspace: the list of task ids whose changes the integration branch
        keeps; removing one drops its change and the branch is rebuilt from the base without it."""
        state = self.state
        assert state.integration is not None
        candidates = [t for t, _ in integration_candidates(state)]
        document = [t for t in candidates if t not in state.integration.dropped]
        branch = state.integration.ref.removeprefix("refs/heads/")
        header = integration_edit_header(state, candidates)
        try:
            kept = self.editor.edit(document, lambda raw: validate_integration(raw, candidates, state.tasks_data),
                                    "integration", header + EDIT_HELP)
        except UsageError as exc:  # no usable editor: say so and ask again, the session goes on
            self.term.say(f"✗ {exc}")
            return
        if kept is None:
            return
        dropped = [t for t in candidates if t not in kept]
        self.term.say(f"Rebuilding {branch}" + (f" without {', '.join(dropped)} ..." if dropped else " ..."))
        try:
            integration = rebuild_integration(state, dropped)
        except WorkspaceError as exc:  # git failed: the branch and the state are as they were
            self.term.say(f"✗ The integration branch could not be rebuilt: {exc}")
            return
        merged = ", ".join(integration.merged) or "nothing"
        self.log.line(f"Checkpoint {point.key}: integration rebuilt: merged {merged}"
                      + (f"; dropped {', '.join(integration.dropped)}" if integration.dropped else ""))
        self.session.record(Decision(checkpoint=point.key, action="edit", target="integration", value=kept))
        self.save()
        try:
            self.runner.store.save(state)  # the run's record names the branch as it now is
        except Exception as exc:  # noqa: BLE001 - the session file is the record that matters here
            self.log.warn(f"could not update run {state.run_id} in the state store: {exc}")

    # ------------------------------------------------------------------- ends
    def pause(self, code: int = 0) -> int:
        """Quit: save everything, say how to resume, exit 0 (130 after Ctrl-C)."""
        state = self.state
        self.session.status = "paused"
        status.paused(state)
        self.save()
        try:
            self.runner.store.save(state)
        except Exception as exc:  # noqa: BLE001 - the session file is the record that matters here
            self.log.warn(f"could not update run {state.run_id} in the state store: {exc}")
        if self.save_file:
            save_state_file(state, self.save_file)
        command = resume_command(self.path, self.invoked_as)
        self.term.say(f"Session saved to {self.path}\nResume with: {command}")
        self.log.line(f"Run {state.run_id} paused; resume with: {command}")
        emit({"run_id": state.run_id, "status": "paused", "session_file": str(self.path),
              "resume_command": command, "phases_completed": sorted(
                  r.phase.number for r in state.phases_executed if r.success and not r.skipped)})
        return code

    def finish(self) -> int:
        state = self.state
        state.selected_phases = sorted(set(self.session.selected_phases) | set(self.session.ran))
        status.finished_interactively(state, any(is_critical_failure(r) for r in state.phases_executed))
        self.runner.store.save(state)
        self.session.status = "finished"
        self.save()
        if self.save_file:
            save_state_file(state, self.save_file)
            self.log.ok(f"Phase state saved to {self.save_file}")
        output = build_output(state, self.session.run_ms, self.save_file)
        emit(output.model_dump(mode="json"))
        if not output.success:
            self.log.fail(f"Run {state.run_id} {state.status}" + (f": {output.error}" if output.error else ""))
        return 0 if output.success else 1
