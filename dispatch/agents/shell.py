"""``shell``: runs any command-line program per task, e.g. a coding-agent CLI.

Config (TOML)::

    [agents.coder]
    kind = "shell"
    command = ["my-agent", "--task", "{task_id}", "--context", "{context_file}", "{prompt}"]
    per_task_dir = true            # or cwd = "sub/dir" (inside the workspace); default: the workspace
    env_allow = ["PATH", "HOME", "MY_AGENT_*"]   # replaces the default safe set; globs allowed
    env = { MY_AGENT_MODE = "batch", MY_AGENT_TOKEN = "${MY_AGENT_TOKEN}" }   # ${NAME}: the worker's variable
    timeout_s = 600                # default: the task's time limit
    outputs = ["out/*.py"]         # collected relative to the working directory
    parse_json = false

Placeholders (see ``template.py``): ``{task_id}``, ``{description}``, ``{prompt}``,
``{context_file}``, ``{run_id}``, ``{attempt}``, ``{agent}``, ``{workspace}``, ``{cwd}``
and ``{input.KEY}``.  Each argv entry stays one argument; there is no shell.
``${NAME}`` in ``command``, ``env`` and ``stdin`` is the worker's variable NAME, read
at run time (a missing one fails the task, naming it); the config, the state and
the payload only ever hold the reference.  The working directory (``cwd``, with
its placeholders filled) must resolve inside the workspace, and the workspace
must be allowed on this worker (``DISPATCH_WORKSPACE_ROOTS``, never ``/`` or a
system tree): task data cannot move an agent elsewhere.  A
prompt too long for one argument (Linux: 128 KiB) can go on stdin instead:
``stdin = "{prompt}"``.

``{context_file}`` is a temporary JSON file (task, context, dependencies' outputs,
prompt) removed after the run; its path is also in ``DISPATCH_CONTEXT_FILE``.
The environment holds only allowed variables, ``env``, and ``DISPATCH_TASK_ID``,
``DISPATCH_RUN_ID``, ``DISPATCH_ATTEMPT`` and ``DISPATCH_IDEMPOTENCY_KEY``
(``run:task:attempt``): worker secrets are not leaked to tools.

Exit code 0 is success.  Exit codes in ``transient_exit_codes`` (e.g. 75,
EX_TEMPFAIL) are failures worth a retry.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional

from pydantic import Field, model_validator

from dispatch.config import ComponentConfig, workspace_root_check
from dispatch.errors import ConfigError
from dispatch.common.text import as_text
from dispatch.agents.base import AGENTS, Agent, AgentInvocation, AgentOptions, AgentOutcome
from dispatch.agents.process import ProcessResult, run_process
from dispatch.agents.template import Template, TemplateError

DEFAULT_ENV_ALLOW = ["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"]
PLACEHOLDERS = {"task_id", "description", "prompt", "context_file", "run_id", "attempt", "agent",
                "workspace", "cwd"}
CONTENT_BUDGET_BYTES = 1024 * 1024  # across all collected files, so a broad glob cannot bloat results


class ShellOptions(AgentOptions):
    command: list[str] = Field(min_length=1)
    cwd: Optional[str] = None
    per_task_dir: bool = False
    keep_task_dir: bool = False
    env_allow: list[str] = Field(default_factory=lambda: list(DEFAULT_ENV_ALLOW))
    env: dict[str, str] = Field(default_factory=dict)
    stdin: Optional[str] = None
    kill_grace_s: float = Field(default=3.0, ge=0, le=3600)
    max_output_bytes: int = Field(default=64 * 1024, ge=16, le=1024 ** 3)
    outputs: list[str] = Field(default_factory=list)
    max_file_bytes: int = Field(default=64 * 1024, ge=0, le=1024 ** 3)
    max_files: int = Field(default=100, ge=0, le=100_000)
    parse_json: bool = False
    transient_exit_codes: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> "ShellOptions":
        if self.per_task_dir and self.cwd:
            raise ValueError("cwd and per_task_dir exclude each other")
        for pattern in self.outputs:
            if os.path.isabs(pattern) or ".." in Path(pattern).parts:
                raise ValueError(f"outputs: '{pattern}' must be relative to the working directory")
        return self


@AGENTS.register("shell")
class ShellAgent(Agent):
    Options = ShellOptions

    def __init__(self, name: str, config: ComponentConfig) -> None:
        super().__init__(name, config)
        where = f"agent '{name}' (shell)"
        opts: ShellOptions = self.options
        self.argv = [Template(arg, f"{where}: command[{i}]", PLACEHOLDERS) for i, arg in enumerate(opts.command)]
        self.env = {key: Template(value, f"{where}: env.{key}", PLACEHOLDERS) for key, value in opts.env.items()}
        self.stdin = Template(opts.stdin, f"{where}: stdin", PLACEHOLDERS) if opts.stdin is not None else None
        self.cwd = Template(opts.cwd, f"{where}: cwd", PLACEHOLDERS - {"cwd"}) if opts.cwd else None
        if not opts.command[0].strip():
            raise ConfigError(f"{where}: command[0] is empty")

    def run(self, inv: AgentInvocation) -> AgentOutcome:
        opts: ShellOptions = self.options
        workspace = os.path.abspath(inv.workspace_path)
        if not os.path.isdir(workspace):
            return AgentOutcome.fail(f"workspace '{inv.workspace_path}' is not a directory on this worker")
        refused = workspace_root_check(workspace)
        if refused:
            return AgentOutcome.fail(refused)
        timeout_s = opts.timeout_s or inv.timeout_s
        with ExitStack() as cleanup:
            context_file = self._write_context_file(inv, cleanup)
            values = {"task_id": inv.task.task_id, "description": inv.task.description, "prompt": inv.prompt,
                      "context_file": context_file, "run_id": inv.run_id, "attempt": str(inv.attempt),
                      "agent": self.name, "workspace": workspace}
            data = inv.task.input_data
            try:
                cwd = self._working_dir(inv, values, data, workspace, cleanup)
                values["cwd"] = cwd
                argv = [t.render(values, data) for t in self.argv]
                env = self._environment(values, data, context_file, inv)
                stdin = self.stdin.render(values, data).encode() if self.stdin else None
            except (TemplateError, OSError) as exc:
                return AgentOutcome.fail(str(exc))
            try:
                result = run_process(argv, cwd=cwd, env=env, stdin=stdin, timeout_s=timeout_s,
                                     kill_grace_s=opts.kill_grace_s, max_output_bytes=opts.max_output_bytes)
            except OSError as exc:
                return AgentOutcome.fail(_start_error(argv[0], exc))
            files, files_truncated = collect_files(cwd, opts.outputs, opts.max_file_bytes, opts.max_files)
            output = _output(result, files, files_truncated)
            if opts.per_task_dir and opts.keep_task_dir:
                output["task_dir"] = cwd
        return self._decide(result, output, timeout_s)

    # ------------------------------------------------------------------ pieces
    def _write_context_file(self, inv: AgentInvocation, cleanup: ExitStack) -> str:
        fd, path = tempfile.mkstemp(prefix=f"dispatch-{_slug(inv.task.task_id)}-", suffix=".json")
        cleanup.callback(_unlink, path)
        document = {
            "run_id": inv.run_id, "attempt": inv.attempt, "user_prompt": inv.user_prompt,
            "task": inv.task.model_dump(mode="json"),
            "context": inv.context.model_dump(mode="json") if inv.context is not None else None,
            "dependency_outputs": inv.dependency_outputs, "prompt": inv.prompt,
            "request_extras": inv.request_extras,
        }
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(document, fh, ensure_ascii=False, default=str)
        return path

    def _working_dir(self, inv: AgentInvocation, values: dict[str, str], data: dict[str, Any],
                     workspace: str, cleanup: ExitStack) -> str:
        opts: ShellOptions = self.options
        if opts.per_task_dir:
            path = tempfile.mkdtemp(prefix=f"dispatch-{_slug(inv.task.task_id)}-")
            if not opts.keep_task_dir:
                cleanup.callback(shutil.rmtree, path, ignore_errors=True)
            return path
        if self.cwd is None:
            return workspace
        given = self.cwd.render(values, data)
        path = os.path.realpath(os.path.join(workspace, given))  # symlinks and ".." resolved, then contained
        real_workspace = os.path.realpath(workspace)
        if os.path.commonpath([path, real_workspace]) != real_workspace:
            raise TemplateError(f"cwd '{given}' is outside the workspace {workspace}")
        if not os.path.isdir(path):
            raise TemplateError(f"cwd '{path}' is not a directory on this worker")
        return path

    def _environment(self, values: dict[str, str], data: dict[str, Any], context_file: str,
                     inv: AgentInvocation) -> dict[str, str]:
        patterns = self.options.env_allow
        env = {k: v for k, v in os.environ.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}
        # The same key on a redelivery after a worker died (same attempt), a new one on a deliberate
        # retry: a tool that writes somewhere can make its side effects idempotent on it (``env`` may
        # replace it with a key of its own).
        env["DISPATCH_IDEMPOTENCY_KEY"] = f"{inv.run_id}:{inv.task.task_id}:{inv.attempt}"
        env.update({key: template.render(values, data) for key, template in self.env.items()})
        env.update({"DISPATCH_TASK_ID": inv.task.task_id, "DISPATCH_RUN_ID": inv.run_id,
                    "DISPATCH_ATTEMPT": str(inv.attempt), "DISPATCH_CONTEXT_FILE": context_file})
        return env

    def _decide(self, result: ProcessResult, output: dict[str, Any], timeout_s: float) -> AgentOutcome:
        opts: ShellOptions = self.options
        if result.timed_out:
            return AgentOutcome.fail(f"timed out after {timeout_s:g}s", output)
        code = result.returncode
        if code != 0:
            if code is not None and code < 0:
                reason = f"killed by signal {_signal_name(-code)}"
            else:
                reason = f"exit code {code}"
            last = _last_line(result.stderr.text) or _last_line(result.stdout.text)
            message = f"{reason}: {last}" if last else reason
            return AgentOutcome.fail(message, output, transient=code in opts.transient_exit_codes)
        if opts.parse_json:
            if result.stdout.truncated:
                return AgentOutcome.fail(f"stdout ({result.stdout.total_bytes} bytes) was truncated at "
                                         f"max_output_bytes={opts.max_output_bytes}; cannot parse JSON", output)
            try:
                output["json"] = parse_json_output(result.stdout.text)
            except ValueError as exc:
                return AgentOutcome.fail(f"stdout is not JSON: {exc}", output)
        return AgentOutcome.ok(output)


def parse_json_output(text: str) -> Any:
    """The whole stdout, or else its last non-empty line (tools often log before the result)."""
    try:
        return json.loads(text)
    except ValueError as whole:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > 1:
            try:
                return json.loads(lines[-1])
            except ValueError:
                pass
        raise whole


def collect_files(root: str, patterns: list[str], max_file_bytes: int,
                  max_files: int) -> tuple[list[dict[str, Any]], bool]:
    """Declared output files under ``root``: path, size and content when small UTF-8 text.
    Matches that resolve outside ``root`` (symlinks) are ignored."""
    base = Path(root)
    real_root = base.resolve()
    files: list[dict[str, Any]] = []
    seen: set[str] = set()
    budget = CONTENT_BUDGET_BYTES
    for pattern in patterns:
        for path in sorted(base.glob(pattern)):
            rel = path.relative_to(base).as_posix()
            if rel in seen or not path.is_file() or not path.resolve().is_relative_to(real_root):
                continue
            if len(files) >= max_files:
                return files, True
            seen.add(rel)
            try:
                size = path.stat().st_size
                raw = path.read_bytes() if size <= min(max_file_bytes, budget) else b"\0"
            except OSError as exc:  # unreadable: reported, and the run's output is kept
                files.append({"path": rel, "size": None, "content": None, "error": exc.strerror or str(exc)})
                continue
            content = None
            if b"\0" not in raw:
                try:
                    content = as_text(raw, errors="strict")
                    budget -= len(raw)
                except UnicodeDecodeError:
                    pass
            files.append({"path": rel, "size": size, "content": content})
    return files, False


def _output(result: ProcessResult, files: list[dict[str, Any]], files_truncated: bool) -> dict[str, Any]:
    return {
        "exit_code": result.returncode,
        "stdout": result.stdout.text,
        "stderr": result.stderr.text,
        "stdout_truncated": result.stdout.truncated,
        "stderr_truncated": result.stderr.truncated,
        "files": files,
        "files_truncated": files_truncated,
        "timed_out": result.timed_out,
        "duration_ms": round(result.duration_ms, 1),
    }


def _start_error(program: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {program}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {program}"
    if exc.errno == 7:  # E2BIG
        return "argument list too long: pass the prompt on stdin (stdin = \"{prompt}\") instead"
    return f"cannot start {program}: {exc.strerror or exc}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _last_line(text: str, limit: int = 300) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[:limit] + "..."
    return ""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:40] or "task"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
