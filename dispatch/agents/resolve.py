"""Which agents exist, what a task's ``agent`` name resolves to, and how long it may run.

The one owner of these answers: planning (phase 2), the preflight before
anything is submitted, the quorum (told which names it may accept) and phase 4
(which runs what phase 2 resolved) all ask here.
"""
from __future__ import annotations

from typing import Iterable, Optional

from dispatch.agents.base import AGENTS, Agent
from dispatch.config import ComponentConfig, DispatchConfig
from dispatch.errors import ConfigError

# Kinds that work with no configuration, so ``"agent": "echo"`` runs out of the box.  Every other
# kind (shell, python, llm, ...) needs options, hence an ``[agents.<name>]`` entry.
BUILTIN_AGENT_NAMES = frozenset({"echo", "sleep"})


def known_agent_names(config: DispatchConfig) -> set[str]:
    """The names a task's ``agent`` may use with this configuration."""
    return set(config.agents) | set(BUILTIN_AGENT_NAMES)


def resolve_agent(name: str, config: DispatchConfig) -> ComponentConfig:
    """A task's ``agent`` name -> its configuration.  Configured names win over the
    built-ins, so a config file may redefine ``echo`` (e.g. with ``fail = true``)."""
    if name in config.agents:
        return config.agents[name]
    if name in BUILTIN_AGENT_NAMES:
        return ComponentConfig(kind=name)
    raise ConfigError(unknown_agents_message([name], config))


def unknown_agents_message(names: Iterable[str], config: DispatchConfig) -> str:
    """Which names are unknown, which are known, and how to define the missing ones (a config file
    given by flag or variable, with an ``[agents.NAME]`` entry per missing name)."""
    missing = sorted(set(names))
    known = ", ".join(sorted(known_agent_names(config)))
    quoted = ", ".join(f"'{n}'" for n in missing)
    snippet = "\n\n".join(f'[agents.{n if n.replace("-", "").replace("_", "").isalnum() else repr(n)}]\n'
                          f'kind = "shell"                 # or "llm", "python", "echo"\n'
                          f'command = ["my-agent", "{{prompt}}"]' for n in missing[:3])
    return (f"unknown agent{'s' if len(missing) > 1 else ''} {quoted} (known: {known}). Define "
            f"{'it' if len(missing) == 1 else 'them'} in a config file given with --config FILE or "
            f"DISPATCH_CONFIG=FILE (TOML, JSON or YAML), for example:\n\n{snippet}\n")


def make_agent(name: str, config: DispatchConfig) -> Agent:
    """Resolve and instantiate; an unknown name, an unknown kind or bad options raise ``ConfigError``."""
    return build_agent(name, resolve_agent(name, config))


def build_agent(name: str, component: ComponentConfig) -> Agent:
    """Instantiate a resolved agent; bad options or an unknown kind raise ``ConfigError``."""
    try:
        cls = AGENTS.get(component.kind)
    except ConfigError as exc:
        raise ConfigError(f"agent '{name}': {exc}") from None
    return cls(name, component)


def resolve_agents(names: Iterable[str], config: DispatchConfig) -> dict[str, ComponentConfig]:
    """Every name resolved and its options checked, or one ``ConfigError`` naming all unknown names.

    ``python`` agents are only resolved: their callables are imported on the workers.
    """
    names = list(dict.fromkeys(names))
    known = known_agent_names(config)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(unknown_agents_message(unknown, config))
    resolved = {}
    for name in names:
        component = resolve_agent(name, config)
        if component.kind != "python":
            build_agent(name, component)
        resolved[name] = component
    return resolved


def task_timeout(component: ComponentConfig, run_timeout_s: float) -> float:
    """The agent's own ``timeout_s`` when it has one, else the run's ``timeout_seconds``."""
    own: Optional[float] = component.options.get("timeout_s")
    return float(own or run_timeout_s)
