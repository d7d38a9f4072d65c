"""Phase selection: which phases a run executes, from the guide's flags.

The rules, as PHASE_CONTROL_GUIDE.md states them:
- phases 0 and 1 run only when enabled (``--enable-context``, ``--enable-quorum``);
  2, 3 and 4 run by default;
- ``--only-phase N`` runs N alone (naming 0 or 1 there enables it: asking for a
  phase by number is asking for it to run);
- ``--stop-after-phase N`` drops every phase after N;
- ``--skip-phases`` drops the listed phases.
A phase whose inputs are neither produced earlier in the same run nor present
in a loaded state is refused before anything is submitted.
"""
from __future__ import annotations

from typing import Optional

from dispatch.errors import UsageError
from dispatch.models import ALL_PHASES, ExecutionPhase, PhaseConfig, PhaseState

LAST_PHASE = ALL_PHASES[-1]


def validate_phase_config(cfg: PhaseConfig) -> None:
    for flag, value in (("--only-phase", cfg.only_phase), ("--stop-after-phase", cfg.stop_after_phase)):
        if value is not None and value not in ALL_PHASES:
            raise UsageError(f"{flag} {value}: phases are numbered 0-{LAST_PHASE}")
    for value in cfg.skip_phases:
        if value not in ALL_PHASES:
            raise UsageError(f"--skip-phases {value}: phases are numbered 0-{LAST_PHASE}")
    if cfg.only_phase is not None:
        if cfg.only_phase in cfg.skip_phases:
            raise UsageError(f"--only-phase {cfg.only_phase} contradicts --skip-phases "
                             f"{','.join(map(str, cfg.skip_phases))}: nothing would run")
        if cfg.stop_after_phase is not None and cfg.stop_after_phase < cfg.only_phase:
            raise UsageError(f"--only-phase {cfg.only_phase} contradicts --stop-after-phase "
                             f"{cfg.stop_after_phase}: nothing would run")


def skip_reason(cfg: PhaseConfig, number: int) -> Optional[str]:
    """Why phase ``number`` does not run, or None when it runs."""
    if cfg.only_phase is not None and number != cfg.only_phase:
        return f"--only-phase {cfg.only_phase}"
    if number in cfg.skip_phases:
        return "--skip-phases"
    if cfg.stop_after_phase is not None and number > cfg.stop_after_phase:
        return f"--stop-after-phase {cfg.stop_after_phase}"
    if cfg.only_phase != number:
        if number == 0 and not cfg.enable_context:
            return "context gathering not enabled (--enable-context)"
        if number == 1 and not cfg.enable_quorum:
            return "quorum validation not enabled (--enable-quorum)"
    return None


def selected_phases(cfg: PhaseConfig) -> list[int]:
    validate_phase_config(cfg)
    phases = [n for n in ALL_PHASES if skip_reason(cfg, n) is None]
    if not phases:
        reasons = "; ".join(f"phase {n}: {skip_reason(cfg, n)}" for n in ALL_PHASES)
        raise UsageError(f"no phase selected, nothing would run ({reasons})")
    return phases


def context_enabled(cfg: PhaseConfig) -> bool:
    return cfg.enable_context or cfg.only_phase == 0


def check_inputs_available(cfg: PhaseConfig, phases: list[int], loaded: Optional[PhaseState]) -> None:
    """Refuse a selection whose first phases lack inputs, naming the way out."""
    def available(phase: ExecutionPhase) -> bool:
        return phase.number in phases or bool(loaded and loaded.has_completed(phase))

    for number in phases:
        if number == 4 and not available(ExecutionPhase.CONTEXT_FILTERING):
            raise UsageError(
                "phase 4 (Parallel Execution) needs phase 3's prepared tasks, and no loaded state holds them.\n"
                "  Use --stop-after-phase 3 --save-phase-state FILE to prepare tasks, then\n"
                "  --load-phase-state FILE --only-phase 4 to resume.")
        if number == 3 and not available(ExecutionPhase.TASK_PLANNING):
            raise UsageError(
                "phase 3 (Context Filtering) needs phase 2's task plan, and no loaded state holds it.\n"
                "  Use --stop-after-phase 2 --save-phase-state FILE, then --load-phase-state FILE.")
        if number == 3 and context_enabled(cfg) and not available(ExecutionPhase.CONTEXT_GATHERING):
            raise UsageError(
                "phase 3 (Context Filtering) with --enable-context needs phase 0's context, and phase 0 is "
                "neither selected nor in a loaded state.\n"
                "  Drop --enable-context to filter without gathered context, or run phase 0 first and "
                "--load-phase-state its saved state.")
