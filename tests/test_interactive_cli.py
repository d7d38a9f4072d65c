"""``-i`` and ``--resume-session`` driven through the real CLI in a pseudo-terminal.

Every test runs ``python cli.py`` as a child process (embedded mode: no broker,
state in a temp directory) and answers its checkpoints like a person would.
stdout is redirected to a file so each test also checks that it holds only the
JSON result, whatever the terminal showed.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

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
target.write_text(step)
'''

TASKS = {"user_prompt": "Write the config parser and its unit tests", "tasks": [
    {"task_id": "parser", "agent": "echo", "description": "Write the config parser module"},
    {"task_id": "tests", "agent": "echo", "description": "Write unit tests for the config parser",
     "dependencies": ["parser"]}]}
OFF_TOPIC = {"user_prompt": "Write the config parser and its unit tests", "tasks": [
    {"task_id": "logo", "agent": "echo", "description": "Design a company logo"},
    {"task_id": "bread", "agent": "echo", "description": "Bake sourdough bread", "dependencies": ["logo"]}]}


class Cli:
    """One test's workspace: input files, state directory, scripted editor."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state_dir = tmp / "state"
        self.editor_dir = tmp / "my editor"  # a space: $EDITOR must be split like a shell does
        self.editor_dir.mkdir()
        (self.editor_dir / "edit.py").write_text(EDITOR_SCRIPT)
        self.plan_file = self.editor_dir / "plan.json"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
        env.update(DISPATCH_STATE_DIR=str(self.state_dir), TERM="dumb", PYTHONUNBUFFERED="1",
                   EDITOR=f"{shlex.quote(PY)} {shlex.quote(str(self.editor_dir / 'edit.py'))} "
                          f"{shlex.quote(str(self.plan_file))}")
        env.pop("VISUAL", None)
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
        return pexpect.spawn("bash", ["-c", command], cwd=str(ROOT), env=self.env(), encoding="utf-8",
                             timeout=90, dimensions=(50, 120))

    def result(self, out: str = "out.json") -> dict:
        return json.loads((self.tmp / out).read_text())  # the whole of stdout must be one JSON document

    def stored_run(self, run_id: str) -> dict:
        return json.loads((self.state_dir / "runs" / f"{run_id}.json").read_text())


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


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


def test_approve_every_checkpoint(cli: Cli) -> None:
    tasks = cli.write("tasks.json", TASKS)
    child = cli.spawn(f"-i -f {tasks} --save-phase-state {cli.tmp / 'saved.json'}")
    child.expect(r"session file: (\S+)")
    session_file = Path(child.match.group(1))
    shown = answer(child, "Checkpoint after phase 2: Task Planning", "x")  # not a choice: asked again
    assert "critical path (2): parser -> tests" in shown and "Write unit tests for the config parser" in shown
    child.expect_exact("Please answer one of: a, e, r, s, b, q")
    child.expect(PROMPT)
    child.sendline("a")
    answer(child, "Checkpoint after phase 3: Context Filtering", "approve")
    shown = answer(child, "Checkpoint after phase 4: Parallel Execution", "a")
    assert "Results: 2 of 2 succeeded" in shown
    code, _ = finish(child)
    assert code == 0
    out = cli.result()
    assert out["success"] is True and out["status"] == "succeeded"
    assert [r["task_id"] for r in out["results"]] == ["parser", "tests"]
    assert [p["skipped"] for p in out["timing_summary"]["phases"]] == [True, True, False, False, False]
    assert cli.stored_run(out["run_id"])["status"] == "succeeded"
    assert json.loads((cli.tmp / "saved.json").read_text())["run_id"] == out["run_id"]
    session = json.loads(session_file.read_text())
    assert session["status"] == "finished" and session["run_id"] == out["run_id"]
    assert session["decided"] == {"after-2": "approve", "after-3": "approve", "after-4": "approve"}


def test_edited_description_reaches_phase_4_after_a_rejected_edit(cli: Cli) -> None:
    tasks = cli.write("tasks.json", TASKS)
    fixed = [dict(TASKS["tasks"][0]),
             dict(TASKS["tasks"][1], description="Write property-based unit tests for the parser")]
    cli.edits('[{"task_id": "tests", "agent": "echo", "description": "x", "dependencies": ["ghost"]}]',
              json.dumps(fixed))
    child = cli.spawn(f"-i -f {tasks}")
    answer(child, "Checkpoint after phase 2", "a")
    answer(child, "Checkpoint after phase 3", "e")
    child.expect_exact("Edit rejected: tasks[0].dependencies: unknown task 'ghost'")
    # phases 2 and 3 derive from the task list: they run again on the edit, then the checkpoint returns
    child.expect_exact("Phase 2: Task Planning")
    child.expect_exact("Phase 3: Context Filtering")
    shown = answer(child, "Checkpoint after phase 3", "a")
    assert "Write property-based unit tests for the parser" in shown
    answer(child, "Checkpoint after phase 4", "a")
    code, _ = finish(child)
    assert code == 0
    calls = cli.editor_calls()
    assert len(calls) == 2 and "ERROR" not in calls[0]
    assert "// ERROR" in calls[1] and "unknown task 'ghost'" in calls[1]  # the reopened file shows why
    out = cli.result()
    by_id = {r["task_id"]: r for r in out["results"]}
    assert by_id["tests"]["output"]["description"] == "Write property-based unit tests for the parser"
    assert "Write property-based unit tests for the parser" in by_id["tests"]["prompt"]
    assert by_id["parser"]["output"]["description"] == "Write the config parser module"
