"""Driving the real CLI in a pseudo-terminal, for the ``-i`` / ``--resume-session`` tests.

Every test runs ``python cli.py`` as a child process (embedded mode unless a
test says otherwise: no broker, state in a temp directory) and answers its
checkpoints like a person would.  stdout is redirected to a file, so each test
also checks that it holds only the JSON result, whatever the terminal showed.
"""
from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pexpect

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
PROMPT = r"\[q\]uit > "
EDITOR_SCRIPT = '''\
"""A scripted $EDITOR: each call replaces the file with the next text from the plan and logs what it saw."""
import json, sys
from pathlib import Path
plan_file, target = Path(sys.argv[1]), Path(sys.argv[-1])
plan = json.loads(plan_file.read_text())
calls = plan_file.with_suffix(".calls")
seen = json.loads(calls.read_text()) if calls.exists() else []
seen.append(target.read_text())
calls.write_text(json.dumps(seen))
step = plan[len(seen) - 1]
if isinstance(step, dict) and "describe" in step:  # set descriptions on the tasks that are there
    body = "\\n".join(l for l in target.read_text().splitlines() if not l.startswith("//"))
    tasks = json.loads(body)
    for task in tasks:
        task["description"] = step["describe"].get(task["task_id"], task["description"])
    step = json.dumps(tasks, indent=2)
if isinstance(step, dict) and "item_content" in step:  # rewrite every gathered context item
    context = json.loads("\\n".join(l for l in target.read_text().splitlines() if not l.startswith("//")))
    for item in context["items"]:
        item["content"] = step["item_content"]
    step = json.dumps(context, indent=2)
target.write_text(step)
'''

TASKS = {"user_prompt": "Write the config parser and its unit tests", "tasks": [
    {"task_id": "parser", "agent": "echo", "description": "Write the config parser module"},
    {"task_id": "tests", "agent": "echo", "description": "Write unit tests for the config parser",
     "dependencies": ["parser"]}]}
OFF_TOPIC = {"user_prompt": "Write the config parser and its unit tests", "tasks": [
    {"task_id": "logo", "agent": "echo", "description": "Design a company logo"},
    {"task_id": "bread", "agent": "echo", "description": "Bake sourdough bread", "dependencies": ["logo"]}]}


class PtyCli:
    """One test's workspace: input files, state directory, scripted editor."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state_dir = tmp / "state"
        self.editor_dir = tmp / "my editor"  # a space: $EDITOR must be split like a shell does
        self.editor_dir.mkdir()
        (self.editor_dir / "edit.py").write_text(EDITOR_SCRIPT)
        self.plan_file = self.editor_dir / "plan.json"
        self.extra_env: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
        env.update(DISPATCH_STATE_DIR=str(self.state_dir), TERM="dumb", PYTHONUNBUFFERED="1",
                   EDITOR=f"{shlex.quote(PY)} {shlex.quote(str(self.editor_dir / 'edit.py'))} "
                          f"{shlex.quote(str(self.plan_file))}")
        env.pop("VISUAL", None)
        env.update(self.extra_env)
        return env

    def write(self, name: str, document: dict) -> Path:
        path = self.tmp / name
        path.write_text(json.dumps(document))
        return path

    def edits(self, *steps: object) -> None:
        self.plan_file.write_text(json.dumps(list(steps)))

    def editor_calls(self) -> list[str]:
        calls = self.plan_file.with_suffix(".calls")
        return json.loads(calls.read_text()) if calls.exists() else []

    def spawn(self, args: str, out: str = "out.json") -> pexpect.spawn:
        command = f"{shlex.quote(PY)} cli.py {args} > {shlex.quote(str(self.tmp / out))}"
        child = pexpect.spawn("bash", ["-c", command], cwd=str(ROOT), env=self.env(), encoding="utf-8",
                              timeout=90, dimensions=(50, 120))
        self.transcript = child.logfile_read = io.StringIO()  # everything the terminal showed
        return child

    def result(self, out: str = "out.json") -> dict:
        return json.loads((self.tmp / out).read_text())  # the whole of stdout must be one JSON document

    def stored_run(self, run_id: str) -> dict:
        return json.loads((self.state_dir / "runs" / f"{run_id}.json").read_text())


def answer(child: pexpect.spawn, checkpoint: str, key: str) -> str:
    """Wait for ``checkpoint``'s summary and prompt, answer ``key``; return what was shown."""
    child.expect_exact(checkpoint)
    child.expect(PROMPT)
    shown = child.before
    child.sendline(key)
    return shown


def finish(child: pexpect.spawn) -> tuple[int, str]:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before


def run_plain(pty_cli: PtyCli, *args: str, stdin_file: Path | None = None) -> subprocess.CompletedProcess:
    """No pseudo-terminal and a new session: the process has no controlling terminal at all."""
    with open(stdin_file or os.devnull, "rb") as stdin:
        return subprocess.run([PY, "cli.py", *args], cwd=ROOT, env=pty_cli.env(), stdin=stdin, capture_output=True,
                              text=True, timeout=60, start_new_session=True)
