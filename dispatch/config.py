"""Configuration: the environment (``DISPATCH_*``) and one optional config file.

``Settings`` is the deployment (where the broker, backend and state live) and is
read from the environment on every process.  ``DispatchConfig`` is the optional
file (TOML, YAML or JSON) naming agents, validators and retrievers; it travels inside
the run's state so that workers on other machines see the same configuration.
Secrets never go in it: components name the environment variable that holds
them (``api_key_env``), or reference it as ``"${NAME}"`` in a shell agent's
``env``/argv and an llm's ``headers``/``base_url``, resolved by each worker from
its own environment when the call is made.  What looks like a literal
credential is refused (:func:`find_inline_secret`); what is written or shown
goes through :func:`redact_secrets`.  Both are dispatch's own rules (which names
and shapes mean "secret" here), so they are written by hand.

Numbers are strict and finite everywhere (``1e999``, ``true`` for a number,
``"5"`` for an integer are refused with their path), because a value coerced
at planning time fails every task at run time.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional
from urllib.parse import parse_qsl, urlsplit

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, Strict, ValidationError, model_serializer,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from dispatch.errors import ConfigError

SECRET_KEYS = ("api_key", "password", "secret", "token")

# strict, finite numbers: ``true`` is not 1, ``"5"`` is not 5, ``1e999`` is not a duration
StrictNumbers = ConfigDict(strict=True, allow_inf_nan=False)
LaxInt = Annotated[int, Strict(False)]  # keys of TOML tables are strings: ``{ "0" = 2000 }``

# ------------------------------------------------------------------ secrets
# The one reference form: ``${NAME}``, resolved from the worker's environment at call time.
SECRET_REFERENCE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")
_SECRET_WORD = r"(api[_-]?key|apikey|key|token|secret|password|passwd|pwd|credentials?|auth|cookie|session)"
SECRET_NAME = re.compile(rf"(^|[_-]){_SECRET_WORD}($|[_-])", re.IGNORECASE)
# names about a secret that are not one: the variable's name, a file holding it, the header to put it in
NOT_SECRET_SUFFIX = re.compile(r"[_-](env|file|path|dir|name|id|header|prefix|url|count|limit|budget)s?$",
                               re.IGNORECASE)
SECRET_HEADER = re.compile(r"^(authorization|proxy-authorization|cookie|x-api-key)$|token|secret|key|auth|"
                           r"session|password", re.IGNORECASE)
SECRET_FLAG = re.compile(r"^(--?[\w-]*(?:key|token|secret|password|passwd))=(.*)$", re.IGNORECASE | re.DOTALL)
SECRET_QUERY = re.compile(r"^(key|api[_-]?key|apikey|token|access[_-]?token|auth|secret|password|passwd|pwd|"
                          r"sig|signature|x-amz-signature|x-goog-signature|client[_-]secret)$", re.IGNORECASE)
# credentials recognisable by their shape wherever they are
TOKEN_SHAPES = re.compile(
    r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}|\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}|"
    r"\bxox[abprs]-[A-Za-z0-9-]{10,}|\bAKIA[0-9A-Z]{16}\b|\bglpat-[A-Za-z0-9_-]{20,}|\bAIza[0-9A-Za-z_-]{35}|"
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\b(?:Bearer|Basic|Token)\s+(?!\$\{)[A-Za-z0-9._~+/=-]{8,}")
REDACTED = "***"


def _literal(value: str) -> bool:
    """A value that holds text of its own: not empty, not a reference, not a placeholder, not redacted."""
    return bool(value.strip()) and "${" not in value and not re.search(r"\{[a-z_][a-z0-9_.]*\}", value) \
        and value.strip("*") != ""


def _url_secret(value: str) -> Optional[str]:
    """What is secret in a URL string: a password (or token-like user) in user:password@, a secret query."""
    if "://" not in value:
        return None
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return None
    if parts.password is not None and _literal(parts.password):
        return "a password in the URL (user:password@)"
    if parts.username and TOKEN_SHAPES.search(parts.username):
        return "a token as the URL's user name"
    for name, item in parse_qsl(parts.query, keep_blank_values=True):
        if SECRET_QUERY.match(name) and _literal(item):
            return f"the query parameter '{name}'"
    return None


def _secret_in(key: Optional[str], value: str, parent: Optional[str]) -> Optional[str]:
    """Why ``value`` (under ``key`` of the mapping ``parent``) is a literal credential, or None."""
    if TOKEN_SHAPES.search(value):
        return "a value shaped like a credential"
    if key is not None and _literal(value):
        if parent in ("headers", "header") and SECRET_HEADER.search(key):
            return f"the header '{key}' holds a credential"
        if SECRET_NAME.search(key) and not NOT_SECRET_SUFFIX.search(key):
            return f"'{key}' names a secret"
    match = SECRET_FLAG.match(value)
    if match and _literal(match.group(2)):
        return f"the argument {match.group(1)}=... carries a credential"
    return _url_secret(value)


def _walk_strings(value: Any, path: str, key: Optional[str] = None, parent: Optional[str] = None):
    """``(path, key, parent key, string)`` for every string in a JSON-like value."""
    stack = [(value, path, key, parent)]
    while stack:
        item, where, name, above = stack.pop()
        if isinstance(item, str):
            yield where, name, above, item
        elif isinstance(item, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k), str(k), name) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{where}[{i}]", None, name) for i, v in enumerate(item))


def find_inline_secret(options: Any, path: str = "") -> Optional[str]:
    """``"agents.x.env.GH_TOKEN: 'GH_TOKEN' names a secret"`` for the first literal credential, else None.

    Recognised: option keys, ``env`` entries and header names that name a secret,
    ``--*key=``/``--*token=`` arguments, URL passwords and secret query parameters,
    and values shaped like well-known tokens.  A value with a ``${NAME}``
    reference (or a ``{placeholder}``) is not a literal.
    """
    found = []
    for where, key, parent, value in _walk_strings(options, path):
        reason = _secret_in(key, value, parent)
        if reason:
            found.append(f"{where}: {reason}")
    return min(found) if found else None


def redact_secrets(value: Any, key: Optional[str] = None, parent: Optional[str] = None) -> Any:
    """A copy of a JSON-like ``value`` with every literal credential :func:`find_inline_secret` knows masked.

    References (``${NAME}``) stay as they are.  For what is written or shown: state, reports, logs.
    """
    if isinstance(value, str):
        if key is not None and _literal(value) and (
                (parent in ("headers", "header") and SECRET_HEADER.search(key))
                or (SECRET_NAME.search(key) and not NOT_SECRET_SUFFIX.search(key))):
            return REDACTED  # the name says it is a secret: the whole value goes
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_secrets(v, str(k), key) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_secrets(v, None, key) for v in value]
    return value


def redact_text(text: str) -> str:
    """``text`` with token-shaped values, ``--*key=VALUE`` arguments, URL passwords and secret query values masked."""
    if not text or not isinstance(text, str):
        return text
    text = TOKEN_SHAPES.sub(lambda m: (m.group(0).split()[0] + " " + REDACTED) if " " in m.group(0) else REDACTED,
                            text)
    text = re.sub(r"(--?[\w-]*(?:key|token|secret|password|passwd)=)([^\s'\"]+)",
                  lambda m: m.group(1) + (REDACTED if _literal(m.group(2)) else m.group(2)), text, flags=re.I)
    text = re.sub(r"([a-z][a-z0-9+.-]*://[^\s/:@]*:)([^\s/@]+)@",
                  lambda m: m.group(1) + (REDACTED if _literal(m.group(2)) else m.group(2)) + "@", text, flags=re.I)
    return re.sub(r"([?&]([\w-]+)=)([^&\s#'\"]*)",
                  lambda m: m.group(1) + (REDACTED if SECRET_QUERY.match(m.group(2)) and _literal(m.group(3))
                                          else m.group(3)), text)


def resolve_references(text: str, environ: Optional[dict[str, str]] = None, where: str = "") -> str:
    """``text`` with each ``${NAME}`` replaced by the worker's variable; ``$${NAME}`` is a literal ``${NAME}``.

    Called at call time on the worker, never before: the resolved value is not stored anywhere.
    """
    env = os.environ if environ is None else environ

    def fill(match: re.Match[str]) -> str:
        if match.group(0).startswith("$$"):
            return match.group(0)[1:]
        name = match.group(1)
        if name not in env:
            raise KeyError(f"{where + ': ' if where else ''}${{{name}}}: the variable {name} is not set on this worker")
        return env[name]
    return re.sub(r"\$?\$\{([A-Z_][A-Z0-9_]*)\}", fill, text)


def _non_finite(value: Any, path: str) -> Optional[str]:
    """The path of the first number that is not finite (``inf``, ``nan``, ``1e999``) in a raw document."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where or "(root)"
        if isinstance(item, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return None


class ComponentConfig(BaseModel):
    """One configured agent, validator or retriever: a kind plus its options."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    kind: str
    weight: float = Field(default=1.0, ge=0)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    _clean: Any = PrivateAttr(default=None)  # the last dump found to hold nothing to redact

    @model_serializer(mode="wrap")
    def _redacted(self, handler: Any) -> Any:
        """Whatever writes a component down (state, payload, report) writes references, never credentials:
        a config that passed :func:`find_inline_secret` comes out unchanged.  One component is dumped once
        per task at fan-out, so a dump equal to the last clean one is not searched again."""
        data = handler(self)
        if self._clean is not None and self._clean == data:
            return data
        redacted = redact_secrets(data)
        if redacted == data:
            self._clean = copy.deepcopy(data)  # a caller may change the dict it was given
        return redacted


class ContextOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    budget_tokens: int = Field(default=5000, ge=1)
    per_task_budget_tokens: int = Field(default=5000, ge=1)
    max_queries: int = Field(default=8, ge=0, le=1000)
    top_k: int = Field(default=8, ge=1, le=10_000)
    structure: bool = True


class QuorumOptions(BaseModel):
    """Voting thresholds and the RETRY policy (defaults as the reference system)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    pass_threshold: float = 0.60
    retry_threshold: float = 0.40
    min_answered_share: float = 0.60
    on_no_quorum: str = "warn"  # "warn" (continue) or "fail"
    max_retries: int = Field(default=3, ge=0)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_cap_s: float = Field(default=8.0, ge=0)
    backoff_jitter: float = Field(default=0.0, ge=0)
    cache_ttl_s: int = Field(default=3600, ge=0)


# Long enough for a large workspace (0, 3) and a quorum of slow models with retries (1); a run that
# needs more says so in [phases] timeouts_s.
DEFAULT_PHASE_TIMEOUTS_S: dict[int, float] = {0: 900.0, 1: 1800.0, 2: 600.0, 3: 1800.0}
PhaseTimeout = Annotated[float, Field(gt=0, le=7 * 24 * 3600)]


class PhaseOptions(BaseModel):
    """Per-phase policies: retries of a phase that raised, and duration thresholds.

    ``retries`` re-runs a phase whose body raised (a retriever down, a model
    timeout), with exponential backoff; a quorum FAIL is a verdict, not an
    error, and is never retried here.  ``thresholds_ms`` maps a phase number to
    the duration past which the run logs a warning and marks the phase result.
    ``timeouts_s`` maps a phase number (0-3) to the seconds after which the
    phase is failed even if its body is still blocked (a hung retriever or model).
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    retries: int = Field(default=0, ge=0, le=10)
    retry_backoff_s: float = Field(default=0.5, ge=0, le=3600)
    thresholds_ms: dict[LaxInt, float] = Field(default_factory=dict)
    # run independent phases at the same time (0 and 1); false: one after another (``pipeline.phase_graph``)
    parallel: bool = True
    # a safety net per phase 0-3 (its attempts included): past it the phase fails, whatever it waits on;
    # phase 4 has none (each agent has its own limit).  Keys not given keep DEFAULT_PHASE_TIMEOUTS_S.
    timeouts_s: dict[LaxInt, PhaseTimeout] = Field(default_factory=dict)

    @field_validator("timeouts_s")
    @classmethod
    def _timeouts_of_phases_0_to_3(cls, timeouts: dict[int, float]) -> dict[int, float]:
        for number in timeouts:
            if number == 4:
                raise ValueError("phase 4 has no phase timeout: each agent has its own "
                                 "(timeout_s, or the run's timeout_seconds)")
            if number not in DEFAULT_PHASE_TIMEOUTS_S:
                raise ValueError(f"no phase {number}: timeouts_s takes phases 0-3")
        return timeouts

    def timeout_for(self, number: int) -> Optional[float]:
        """Phase ``number``'s timeout in seconds (None: phase 4, which has none)."""
        return self.timeouts_s.get(number, DEFAULT_PHASE_TIMEOUTS_S.get(number))


Isolation = Literal["auto", "git", "shared"]


class WorkspaceOptions(BaseModel):
    """How tasks see the repository (``[workspace]`` in the config file)."""

    model_config = ConfigDict(extra="forbid")

    # auto: git when workspace_path is inside a git work tree, shared (one directory for all) otherwise
    isolation: Isolation = "auto"
    # start from this commit-ish instead of a snapshot of what the user sees
    base_ref: Optional[str] = None
    # argv run in each fresh checkout before the agent (e.g. ["npm", "ci"])
    setup: list[str] = Field(default_factory=list)
    setup_timeout_s: float = Field(default=600, gt=0)
    # gitignore-style globs of untracked files copied from the user's workspace (e.g. ".env")
    copy_untracked: list[str] = Field(default_factory=list)
    # leave each checkout on disk after the task (for debugging)
    keep: bool = False
    # a git remote every worker can reach (URL or path); None: workers read the user's repository
    remote: Optional[str] = None
    overlapping_writes: Literal["warn", "serialize", "error"] = "warn"
    # fail a task that changed files outside its declared writes
    enforce_writes: bool = False
    # the agent handed an integration conflict, by name
    resolver: Optional[str] = None
    # patches kept in results are cut to this many bytes (patch_bytes keeps the full size)
    patch_max_bytes: int = Field(default=64 * 1024, ge=0)
    # every git command is killed after this long (a hung remote never hangs a worker)
    git_timeout_s: float = Field(default=300, gt=0)

    @field_validator("remote")
    @classmethod
    def _no_password_in_remote(cls, remote: Optional[str]) -> Optional[str]:
        """The options travel in the run's state: a password in the URL would be saved with it."""
        if remote and "://" in remote and urlsplit(remote).password:
            raise ValueError("the remote URL holds a password, which would be saved with the run; "
                             "use ssh keys or a git credential helper instead")
        return remote


class Price(BaseModel):
    """``[prices."<model>"]``: dollars per million tokens (``dispatch.common.spend`` turns tokens into cost)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class BudgetOptions(BaseModel):
    """``[budget]`` (or the input's ``config.budget``, whose keys win): the caps that pause a run.

    Spend is the run's (every attempt of it, the quorum included); a task reserves an
    estimate before it starts (its agent's ``estimated_cost_usd``, else the mean of the
    run's finished tasks of that agent, else ``default_estimate_usd`` / ``default_estimate_tokens``).
    ``max_wall_s`` counts from the run's start.  None: no cap.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    max_cost_usd: Optional[float] = Field(default=None, ge=0)
    max_tokens: Optional[int] = Field(default=None, ge=0)
    max_wall_s: Optional[float] = Field(default=None, gt=0)
    per_task_max_cost_usd: Optional[float] = Field(default=None, ge=0)
    default_estimate_usd: Optional[float] = Field(default=None, ge=0)
    default_estimate_tokens: Optional[int] = Field(default=None, ge=0)

    def over(self, other: Optional["BudgetOptions"]) -> "BudgetOptions":
        """These options with every key ``other`` sets replacing ours."""
        if other is None:
            return self
        return self.model_copy(update=other.model_dump(exclude_unset=True))

    @property
    def capped(self) -> bool:
        return any(v is not None for v in (self.max_cost_usd, self.max_tokens, self.max_wall_s))


class TaskWorkspace(BaseModel):
    """What one task may override, from its ``workspace`` key."""

    model_config = ConfigDict(extra="forbid")

    isolation: Optional[Isolation] = None
    setup: Optional[list[str]] = None
    keep: Optional[bool] = None


# ------------------------------------------------------------------ provider limits
MODEL_PROVIDERS = ("openai", "anthropic")  # the wire protocols of dispatch.common.providers
DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
# agent kinds whose calls go through dispatch.common.providers (coding CLIs call their models themselves)
MODEL_AGENT_KINDS = ("llm",)
LIMIT_NAME = re.compile(r"^[A-Za-z0-9_.:@/+-]{1,200}$")


class ProviderLimits(BaseModel):
    """``[providers.<name>]``: what all workers of a deployment together may send one provider.

    Enforced in the deployment's Redis (``dispatch.store.limiter``); a model call
    waits for its slot up to ``max_wait_s``.  ``retries``: how many more times
    one call is tried after a transient failure (429, 5xx, timeout), before its
    caller's own retry (an agent task's, the quorum's) takes over.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    requests_per_minute: Optional[float] = Field(default=None, gt=0, le=1_000_000)
    tokens_per_minute: Optional[int] = Field(default=None, gt=0)
    max_concurrency: Optional[int] = Field(default=None, gt=0, le=100_000)
    max_wait_s: float = Field(default=300.0, gt=0, le=24 * 3600)
    retries: int = Field(default=0, ge=0, le=10)


def provider_limit_name(provider: str, base_url: Any = None) -> str:
    """The ``[providers.<name>]`` a model call counts against when its component names none
    (``provider_limit``): ``<provider>:<host>[:<port>]`` of its base URL as written."""
    url = base_url if isinstance(base_url, str) and base_url else DEFAULT_BASE_URLS.get(provider, "")
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a port: ClientOptions refuses such a URL with its own message
        port = ""
    return f"{provider}:{(parts.hostname or '').lower()}{port}"


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
    workspace: WorkspaceOptions = Field(default_factory=WorkspaceOptions)
    budget: BudgetOptions = Field(default_factory=BudgetOptions)
    prices: dict[str, Price] = Field(default_factory=dict)  # by model name, as the provider is asked for it
    providers: dict[str, ProviderLimits] = Field(default_factory=dict)  # rate limits by name (README)

    @model_validator(mode="before")
    @classmethod
    def _finite_numbers(cls, data: Any) -> Any:
        """``inf``/``nan`` (TOML, ``1e999`` in JSON) anywhere, option extras included, is refused with its path."""
        where = _non_finite(data, "")
        if where:
            raise ValueError(f"{where}: numbers must be finite (got inf or nan)")
        return data

    @model_validator(mode="after")
    def _provider_limits(self) -> "DispatchConfig":
        """Each model caller carries its ``[providers.<name>]`` table (option ``provider_limits``): an agent
        task sees its own component only, so the limits travel with it.  Idempotent (a saved state
        is validated again); a ``provider_limit`` naming no table is a typo, refused here."""
        for name in self.providers:
            if not LIMIT_NAME.match(name):
                raise PydanticCustomError("provider_name", "providers.{name}: a provider name is 1-200 letters, "
                                          "digits or _.:@/+- (the default names look like "
                                          "\"openai:api.openai.com\")", {"name": name})
        for where, component, provider in self.model_callers():
            options = component.__pydantic_extra__
            if options is None:
                continue
            explicit = options.get("provider_limit")
            if explicit is not None and (not isinstance(explicit, str) or explicit not in self.providers):
                known = ", ".join(sorted(self.providers)) or "none"
                raise PydanticCustomError("provider_limit", "{where}.provider_limit: no [providers.\"{name}\"] "
                                          "table (configured: {known})",
                                          {"where": where, "name": str(explicit), "known": known})
            name = explicit or provider_limit_name(provider, options.get("base_url"))
            if name in self.providers:
                options["provider_limits"] = self.providers[name].model_dump()
            else:
                options.pop("provider_limits", None)
        return self

    def model_callers(self) -> list[tuple[str, ComponentConfig, str]]:
        """``(where, component, provider)`` of every component that calls a model through
        ``dispatch.common.providers``: ``llm`` agents, model validators, the planner."""
        found = [(f"agents.{name}", c, c.options.get("provider")) for name, c in self.agents.items()
                 if c.kind in MODEL_AGENT_KINDS]
        found += [(f"validators.{name}", c, c.kind) for name, c in self.validators.items()
                  if c.kind in MODEL_PROVIDERS]
        if self.planner is not None:
            found.append(("planner", self.planner, self.planner.options.get("provider") or self.planner.kind))
        return [(where, c, provider) for where, c, provider in found if provider in MODEL_PROVIDERS]

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

    def inline_secret(self) -> Optional[str]:
        """The first literal credential in any component's options (``agents.x.env.T: why``), else None."""
        components = {**{f"agents.{k}": v for k, v in self.agents.items()},
                      **{f"validators.{k}": v for k, v in self.validators.items()},
                      **{f"retrievers.{k}": v for k, v in self.retrievers.items()},
                      **({"planner": self.planner} if self.planner else {})}
        for where, component in components.items():
            for key in component.options:
                if key.lower() in SECRET_KEYS:
                    return f"{where}.{key}: a secret in the config"
            found = find_inline_secret(component.options, where)
            if found:
                return found
        return None

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
            found = find_inline_secret(component.options, where)
            if found:
                raise ConfigError(
                    f"config file {path}: {found}: secrets are read from the worker's environment; reference "
                    f"the variable instead (\"${{NAME}}\", e.g. \"Bearer ${{OPENAI_API_KEY}}\"), or api_key_env")


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


DEFAULT_MAX_INPUT_BYTES = 32 * 1024 * 1024

# documented names that differ from DISPATCH_<FIELD>: the README and --help say DISPATCH_CONFIG
ENV_ALIASES = {"DISPATCH_CONFIG": "config_file"}


class Settings(BaseModel):
    """Deployment settings, one typed object read from the environment."""

    model_config = ConfigDict(allow_inf_nan=False)

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
    # how often each worker (Redis broker) looks for phase-4 messages lost by a killed worker and sends
    # them again; one is sent after it was found lost on two looks in a row (dispatch.runtime.watchdog)
    stall_check_s: float = Field(default=30.0, gt=0, le=3600)
    # plain progress lines on a non-terminal stderr: at most one per interval, only for long phases
    progress_interval_s: float = Field(default=10.0, gt=0)
    # task events (sent, received, started, succeeded) for Flower and `celery events`; each is a publish
    task_events: bool = True
    # the folders (os.pathsep-separated) a workspace_path may be in, on this worker; default: the current
    # directory and the system's temporary directory (see workspace_root_check)
    workspace_roots: Optional[str] = None
    # an input (task breakdown) larger than this is refused before it is parsed
    max_input_bytes: int = Field(default=DEFAULT_MAX_INPUT_BYTES, ge=1024)

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


# ---------------------------------------------------------------- workspaces
# Never a workspace, whatever DISPATCH_WORKSPACE_ROOTS says: the host's own trees and kernel file systems.
SYSTEM_TREES = ("/proc", "/sys", "/dev", "/etc", "/boot", "/run")


def git_cache_root(environ: Optional[dict[str, str]] = None) -> Path:
    """Where a worker keeps its git cache and the tasks' checkouts: ``DISPATCH_GIT_CACHE``, else
    ``<DISPATCH_STATE_DIR>/git-cache``."""
    env = os.environ if environ is None else environ
    if env.get("DISPATCH_GIT_CACHE"):
        return Path(env["DISPATCH_GIT_CACHE"]).expanduser().resolve()
    return (Path(env.get("DISPATCH_STATE_DIR") or ".dispatch").expanduser() / "git-cache").resolve()


def workspace_roots(environ: Optional[dict[str, str]] = None) -> list[Path]:
    """The allowed roots on this process: ``DISPATCH_WORKSPACE_ROOTS`` (os.pathsep-separated), else the
    current directory and the temporary directory; and always the git cache, where dispatch makes the
    tasks' own checkouts.  ``/`` and the system trees are never roots."""
    env = os.environ if environ is None else environ
    raw = env.get("DISPATCH_WORKSPACE_ROOTS", "")
    given = [part for part in raw.split(os.pathsep) if part.strip()] if raw.strip() else \
        [os.getcwd(), tempfile.gettempdir()]
    given.append(str(git_cache_root(env)))
    roots = []
    for part in given:
        root = Path(os.path.realpath(os.path.expanduser(part)))
        if root != Path("/") and not _system_tree(root):
            roots.append(root)
    return roots


def _system_tree(path: Path) -> Optional[str]:
    for tree in SYSTEM_TREES:
        if path == Path(tree) or path.is_relative_to(tree):
            return tree
    return None


def workspace_root_check(path: str, environ: Optional[dict[str, str]] = None) -> Optional[str]:
    """Why this worker must not use ``path`` as a workspace (None when it may).

    The input names its workspace; a worker reads and runs there with its own
    rights, so the folder must be under an allowed root, and is never ``/`` or
    a system tree (symlinks resolved first).
    """
    real = Path(os.path.realpath(os.path.expanduser(path or ".")))
    if real == Path("/"):
        return f"workspace_path {path!r} is the root of the file system"
    tree = _system_tree(real)
    if tree:
        return f"workspace_path {path!r} is in the system tree {tree}"
    roots = workspace_roots(environ)
    if not any(real == root or real.is_relative_to(root) for root in roots):
        shown = os.pathsep.join(str(r) for r in roots) or "(none)"
        return (f"workspace_path {path!r} is outside the allowed workspace roots on this worker ({shown}); "
                f"set DISPATCH_WORKSPACE_ROOTS on the workers to allow it")
    return None
