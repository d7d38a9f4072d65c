"""Editing a JSON document in the user's editor until it validates.

The editor is ``$VISUAL``, else ``$EDITOR``, else ``vi``, split the way a shell
splits it, so ``EDITOR="code --wait"`` works.  It runs attached to the terminal
(never to our stdin, which may be the piped task breakdown, nor to our stdout,
which carries only the JSON result).  Lines starting with ``//`` are comments:
the header explains the file, and after a rejected edit the error is written
there too, so it is visible even in an editor that has no terminal of its own.

An edited task list gets the checks a breakdown gets on input and in phase 2
(``TaskSpec`` shape, graph, known agents), so an accepted edit cannot break a
later phase.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, TextIO, TypeVar

from pydantic import TypeAdapter, ValidationError

from dispatch.config import DispatchConfig, format_validation_error
from dispatch.errors import UsageError
from dispatch.models import GlobalContext, TaskSpec
from dispatch.pipeline.plan import plan_run
from dispatch.planning.graph import GraphError

T = TypeVar("T")


class EditRejected(ValueError):
    """The edited document does not validate; the message says where and why."""


def editor_command(environ: Optional[dict[str, str]] = None) -> list[str]:
    env = os.environ if environ is None else environ
    raw = env.get("VISUAL") or env.get("EDITOR") or "vi"
    try:
        argv = shlex.split(raw)
    except ValueError as exc:
        raise UsageError(f"cannot parse the editor command {raw!r}: {exc}") from None
    if not argv:
        raise UsageError("$VISUAL/$EDITOR is set but empty")
    return argv


def strip_comments(text: str) -> str:
    """Blank out ``//`` lines (a JSON string cannot span lines, so none of them is data),
    keeping line numbers as the user saw them."""
    return "\n".join("" if line.lstrip().startswith("//") else line for line in text.splitlines())


def render(body: str, header: list[str], error: Optional[str] = None) -> str:
    """The file the user sees: comment header, the error if the last edit was refused, the JSON."""
    lines = [f"// {line}" for line in header]
    if error:
        lines += ["//", "// ERROR: the last edit was not accepted:"] + [f"//   {part}" for part in error.splitlines()]
    return "\n".join(lines) + "\n" + body.rstrip("\n") + "\n"


class Editor:
    """Runs the editor on a temporary file, attached to ``tty`` (a terminal opened read-write)."""

    def __init__(self, tty: TextIO, say: Callable[[str], None], argv: Optional[list[str]] = None) -> None:
        self.tty = tty
        self.say = say
        self.argv = argv  # None: read $VISUAL/$EDITOR when an edit is asked for, not before

    def open(self, path: Path) -> int:
        argv = self.argv or editor_command()
        try:
            return subprocess.call([*argv, str(path)], stdin=self.tty, stdout=self.tty, stderr=self.tty)
        except OSError as exc:
            raise UsageError(f"cannot start the editor {shlex.join(argv)}: {exc.strerror or exc} "
                             f"(set $VISUAL or $EDITOR)") from None

    def edit(self, document: Any, validate: Callable[[Any], T], name: str, header: list[str]) -> Optional[T]:
        """The validated edit, or None when the user left it unchanged, emptied it or the editor failed.

        An invalid edit reopens the editor on the user's own text, with the error on top.
        """
        original = json.dumps(document, indent=2, ensure_ascii=False)
        fd, tmp = tempfile.mkstemp(prefix=f"dispatch-{name}-", suffix=".json")
        os.close(fd)
        path = Path(tmp)
        body, error = original, None
        try:
            while True:
                path.write_text(render(body, header, error), encoding="utf-8")
                status = self.open(path)
                if status != 0:
                    self.say(f"The editor exited with status {status}; the edit is discarded.")
                    return None
                edited = strip_comments(path.read_text(encoding="utf-8"))
                if not edited.strip():
                    self.say("The file was emptied; the edit is discarded.")
                    return None
                if error is not None and edited.strip() == body.strip():
                    self.say("Unchanged after the error; the edit is discarded.")
                    return None
                body = edited.strip("\n")
                try:
                    raw = json.loads(edited)
                except json.JSONDecodeError as exc:
                    where = edited.splitlines()[exc.lineno - 1].strip() if exc.lineno <= len(edited.splitlines()) else ""
                    error = (f"malformed JSON at line {exc.lineno}, column {exc.colno} of your last version: "
                             f"{exc.msg}" + (f" (near: {where[:60]})" if where else ""))
                else:
                    if raw == json.loads(original):
                        self.say("No changes.")
                        return None
                    try:
                        return validate(raw)
                    except EditRejected as exc:
                        error = str(exc)
                self.say(f"✗ Edit rejected: {error}\n  Reopening the editor (empty the file to discard the edit).")
        finally:
            path.unlink(missing_ok=True)


# ------------------------------------------------------------ what an edit must satisfy
EDIT_HELP = ["Lines starting with // are ignored. Save and close the editor to apply;",
             "empty the file (or leave it unchanged) to keep things as they were."]


def validate_tasks(raw: Any, config: DispatchConfig) -> list[TaskSpec]:
    """The same checks a breakdown gets on input and in phase 2: shape, graph, agents."""
    if not isinstance(raw, list):
        raise EditRejected(f"expected a JSON list of tasks, got {type(raw).__name__}")
    if not raw:
        raise EditRejected("the task list is empty; nothing would run (quit instead to stop the run)")
    try:
        tasks = TypeAdapter(list[TaskSpec]).validate_python(raw)
    except ValidationError as exc:
        raise EditRejected("tasks" + format_validation_error(exc)) from None
    try:
        plan_run(tasks, config)
    except GraphError as exc:
        raise EditRejected(str(exc)) from None
    return tasks


def validate_context(raw: Any) -> GlobalContext:
    if not isinstance(raw, dict):
        raise EditRejected(f"expected a JSON object (the global context), got {type(raw).__name__}")
    try:
        return GlobalContext.model_validate(raw)
    except ValidationError as exc:
        raise EditRejected("global_context." + format_validation_error(exc)) from None


def validate_integration(raw: Any, candidates: list[str], tasks: list[TaskSpec]) -> list[str]:
    """The task ids whose changes stay in the integration, in ``candidates``' order.

    A kept task must not build on a dropped one: its checkout started from that change, so its
    commit carries it (the engine would leave it out anyway; saying so here lets the user choose).
    """
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise EditRejected("expected a JSON list of task ids (strings): the changes the integration keeps")
    unknown = [item for item in raw if item not in candidates]
    if unknown:
        raise EditRejected(f"not a succeeded task with a change: {', '.join(map(repr, unknown))} "
                           f"(the changes that can be integrated: {', '.join(candidates) or 'none'})")
    kept = set(raw)
    dropped = [t for t in candidates if t not in kept]
    needs = {t.task_id: t.dependencies for t in tasks}

    def ancestors(task_id: str) -> set[str]:
        seen: set[str] = set()
        todo = list(needs.get(task_id, []))
        while todo:
            dep = todo.pop()
            if dep not in seen:
                seen.add(dep)
                todo += needs.get(dep, [])
        return seen

    problems = []
    for task_id in (t for t in candidates if t in kept):
        carried = [d for d in dropped if d in ancestors(task_id)]
        if carried:
            names = ", ".join(f"'{d}'" for d in carried)
            which = "that change" if len(carried) == 1 else "those changes"
            problems.append(f"'{task_id}' builds on {names} (its checkout started from {which}): "
                            f"drop '{task_id}' too, or keep {names}")
    if problems:
        raise EditRejected("; ".join(problems))
    return [t for t in candidates if t in kept]
