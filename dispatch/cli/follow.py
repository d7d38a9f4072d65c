"""What a person sees while a run is followed: the guide's phase blocks on stderr and the progress line."""
from __future__ import annotations

from typing import Optional

from dispatch.cli.log import Log, execution_lines, phase_body, phase_header
from dispatch.cli.progress import Progress
from dispatch.config import Settings
from dispatch.models import ExecutionPhase, PhaseState


class LogObserver:
    """``RunObserver`` for the CLI: each phase's header when it starts, its body when it ends."""

    def __init__(self, log: Log, settings: Settings) -> None:
        self.log = log
        self.bar = Progress(log.stream, quiet=log.quiet, interval_s=settings.progress_interval_s)

    @property
    def poll_s(self) -> float:
        return self.bar.poll_s

    def line(self, text: str) -> None:
        self.log.line(text)

    def ok(self, text: str) -> None:
        self.log.ok(text)

    def warn(self, text: str) -> None:
        self.log.warn(text)

    def phase_started(self, phase: ExecutionPhase, state: PhaseState) -> None:
        self.log.raw("\n".join(phase_header(phase, state, state.config.quorum.max_retries)))
        if phase == ExecutionPhase.PARALLEL_EXECUTION:
            self.log.line(f"Executing {len(state.tasks_data)} tasks in parallel...")

    def phase_finished(self, phase: ExecutionPhase, state: PhaseState) -> None:
        result = state.result_for(phase)
        if result is None:
            return
        if phase == ExecutionPhase.PARALLEL_EXECUTION:
            self.log.lines(execution_lines(result, state))
        else:
            self.log.lines(phase_body(result, state, state.config.quorum.max_retries))
        self.log.line()

    def progress_start(self, phase: ExecutionPhase) -> None:
        self.bar.start(phase)

    def progress(self, done: Optional[int] = None, total: Optional[int] = None) -> None:
        self.bar.update(done, total)

    def spend(self, cost_usd: Optional[float], tokens: int) -> None:
        """Phase 4's spend so far (its progress meta), shown on the progress line."""
        from dispatch.common.spend import describe
        from dispatch.models import Usage

        self.bar.spent = describe(Usage(input_tokens=int(tokens or 0), cost_usd=cost_usd, calls=1))

    def progress_clear(self) -> None:
        self.bar.clear()

    def progress_finish(self) -> None:
        self.bar.finish()
