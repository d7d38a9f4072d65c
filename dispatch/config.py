"""Configuration: the environment (``DISPATCH_*``) and one optional config file.

``Settings`` is the deployment (where the broker, backend and state live) and is
read from the environment on every process.  ``DispatchConfig`` is the optional
file (TOML, YAML or JSON) naming agents, validators and retrievers; it travels inside
the run's state so that workers on other machines see the same configuration.
Secrets never go in it: components name the environment variable that holds
them (``api_key_env``), and each worker reads its own environment.
"""
from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dispatch.errors import ConfigError

SECRET_KEYS = ("api_key", "password", "secret", "token")


class ComponentConfig(BaseModel):
    """One configured agent, validator or retriever: a kind plus its options."""

    model_config = ConfigDict(extra="allow")

    kind: str
    weight: float = 1.0

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ContextOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    budget_tokens: int = Field(default=5000, ge=1)
    per_task_budget_tokens: int = Field(default=5000, ge=1)


class QuorumOptions(BaseModel):
    """Voting thresholds and the RETRY policy (defaults as the reference system)."""

    model_config = ConfigDict(extra="allow")

    pass_threshold: float = 0.60
    retry_threshold: float = 0.40
    min_answered_share: float = 0.60
    on_no_quorum: str = "warn"  # "warn" (continue) or "fail"
    max_retries: int = Field(default=3, ge=0)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_cap_s: float = Field(default=8.0, ge=0)
    backoff_jitter: float = Field(default=0.0, ge=0)
    cache_ttl_s: int = Field(default=3600, ge=0)


class PhaseOptions(BaseModel):
    """Per-phase policies: retries of a phase that raised, and duration thresholds.

    ``retries`` re-runs a phase whose body raised (a retriever down, a model
    timeout), with exponential backoff; a quorum FAIL is a verdict, not an
    error, and is never retried here.  ``thresholds_ms`` maps a phase number to
    the duration past which the run logs a warning and marks the phase result.
    """

    model_config = ConfigDict(extra="forbid")

    retries: int = Field(default=0, ge=0, le=10)
    retry_backoff_s: float = Field(default=0.5, ge=0)
    thresholds_ms: dict[int, float] = Field(default_factory=dict)


class DispatchConfig(BaseModel):
    """The optional config file."""

    model_config = ConfigDict(extra="forbid")

    agents: dict[str, ComponentConfig] = Field(default_factory=dict)
    validators: dict[str, ComponentConfig] = Field(default_factory=dict)
    retrievers: dict[str, ComponentConfig] = Field(default_factory=dict)
    planner: Optional[ComponentConfig] = None
    context: ContextOptions = Field(default_factory=ContextOptions)
    quorum: QuorumOptions = Field(default_factory=QuorumOptions)
    phases: PhaseOptions = Field(default_factory=PhaseOptions)

    @classmethod
    def load(cls, path: Optional[str]) -> "DispatchConfig":
        if not path:
            return cls()
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read ({exc.strerror or exc})") from None
        raw = parse_config_text(text, file)
        try:
            config = cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"config file {path}: {format_validation_error(exc)}") from None
        config.refuse_inline_secrets(path)
        return config

    def refuse_inline_secrets(self, path: str) -> None:
        """Secrets belong in the environment; the config travels in state and task arguments."""
        sections = {**{f"agents.{k}": v for k, v in self.agents.items()},
                    **{f"validators.{k}": v for k, v in self.validators.items()},
                    **{f"retrievers.{k}": v for k, v in self.retrievers.items()}}
        if self.planner:
            sections["planner"] = self.planner
        for where, component in sections.items():
            for key in component.options:
                if key.lower() in SECRET_KEYS:
                    raise ConfigError(
                        f"config file {path}: {where}.{key}: secrets are read from the environment; "
                        f"use {key}_env = \"NAME_OF_VARIABLE\" instead")


def parse_config_text(text: str, file: Path) -> Any:
    """The config file's document, by its suffix: ``.toml``, ``.yaml``/``.yml`` (PyYAML's safe loader:
    no tags, no objects), anything else JSON.  A fault names the file, the format and where."""
    suffix = file.suffix.lower()
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: invalid TOML: {exc}") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"config file {file}: reading YAML needs PyYAML (pip install pyyaml); "
                              f"or write the config as TOML or JSON") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file}: invalid YAML: {' '.join(str(exc).split())}") from None
        return {} if raw is None else raw
    try:
        return json.loads(text)
    except ValueError as exc:
        hint = "" if suffix == ".json" else " (a config file is TOML (.toml), YAML (.yaml, .yml) or JSON)"
        raise ConfigError(f"config file {file}: invalid JSON: {exc}{hint}") from None


def format_validation_error(exc: ValidationError) -> str:
    """``tasks[2].dependencies: field required`` style, first few faults."""
    parts = []
    for err in exc.errors()[:5]:
        path = ""
        for loc in err["loc"]:
            path += f"[{loc}]" if isinstance(loc, int) else (f".{loc}" if path else str(loc))
        parts.append(f"{path or '(root)'}: {err['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


# documented names that differ from DISPATCH_<FIELD>: the README and --help say DISPATCH_CONFIG
ENV_ALIASES = {"DISPATCH_CONFIG": "config_file"}


class Settings(BaseModel):
    """Deployment settings, one typed object read from the environment."""

    # URLs may hold passwords: kept out of repr(), printed only through redact_url()
    broker_url: Optional[str] = Field(default=None, repr=False)
    result_backend: Optional[str] = Field(default=None, repr=False)
    state_url: Optional[str] = Field(default=None, repr=False)
    state_dir: str = ".dispatch"
    key_prefix: str = "dispatch"
    state_ttl_s: int = 7 * 24 * 3600
    config_file: Optional[str] = None
    embedded_concurrency: int = 8
    # a late-acked message unacked this long is handed to another worker (Redis broker): keep it
    # above the longest agent time limit, or a task still running gets a second delivery
    visibility_timeout_s: int = Field(default=2 * 3600, ge=1)
    # how long the CLI rides out a lost broker/backend connection before it gives up on following
    reconnect_timeout_s: float = Field(default=60.0, ge=0)
    # plain progress lines on a non-terminal stderr: at most one per interval, only for long phases
    progress_interval_s: float = Field(default=10.0, gt=0)
    # task events (sent, received, started, succeeded) for Flower and `celery events`; each is a publish
    task_events: bool = True

    @property
    def embedded(self) -> bool:
        return not self.broker_url

    @classmethod
    def from_env(cls, environ: Optional[dict[str, str]] = None) -> "Settings":
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        names = {f"DISPATCH_{field.upper()}": field for field in cls.model_fields}
        for name, field in {**ENV_ALIASES, **names}.items():
            raw = env.get(name)
            if raw not in (None, ""):
                values[field] = raw
        for field in ("broker_url", "result_backend", "state_url"):
            if field in values:
                values[field] = verify_tls_by_default(values[field])
        broker = values.get("broker_url")
        if broker and "result_backend" not in values and broker.startswith(("redis://", "rediss://")):
            values["result_backend"] = broker
        if "state_url" not in values and values.get("result_backend", "").startswith(("redis://", "rediss://")):
            values["state_url"] = values["result_backend"]
        backend = values.get("result_backend")
        if broker and not (backend or "").startswith(("redis://", "rediss://")):
            # chords, the phase-4 scheduler and the run history all live in the backend's Redis
            raise ConfigError(f"environment: DISPATCH_RESULT_BACKEND must be a redis:// or rediss:// URL with "
                              f"the broker {redact_url(broker)} (got {redact_url(backend) or 'nothing'})")
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(f"environment: {format_validation_error(exc)}") from None


def verify_tls_by_default(url: str) -> str:
    """``rediss://`` without ``ssl_cert_reqs``: Celery refuses it, so add redis-py's own default
    (verify the server's certificate) rather than fail on the first connection."""
    if not url.startswith("rediss://") or "ssl_cert_reqs=" in url:
        return url
    return url + ("&" if "?" in url else "?") + "ssl_cert_reqs=required"


def redact_url(url: Optional[str]) -> str:
    """``redis://:secret@host`` -> ``redis://:***@host``: URLs are never printed in full.

    Failover lists (``amqp://a;amqp://b``) are redacted item by item, and a
    ``password=`` query parameter is masked too.
    """
    if not url:
        return ""
    if ";" in url:
        return ";".join(redact_url(part) for part in url.split(";"))
    scheme, sep, rest = url.partition("://")
    if "?" in rest:
        rest, _, query = rest.partition("?")
        query = "&".join(f"{k}=***" if k.lower() in ("password", "passwd") and v else f"{k}{eq}{v}"
                         for k, eq, v in (item.partition("=") for item in query.split("&")))
        rest = f"{rest}?{query}"
    if "@" in rest:
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        rest = f"{user}:***@{host}"
    return f"{scheme}{sep}{rest}"
