"""Task breakdowns and assertions shared by the embedded and the distributed CLI tests."""
from __future__ import annotations

import json
from pathlib import Path

from dispatch.models import ExecutionPhase

PHASES = [p.value for p in ExecutionPhase]


def breakdown(workspace: Path, n_extra: int = 0, fail: str | None = None, sleep_ms: int = 0) -> str:
    """A prompt-aligned diamond of echo tasks, optionally with extra independent sleep tasks."""
    tasks = [
        {"task_id": "schema", "agent": "echo", "description": "Design the postgres adapter connection schema",
         "context_requirements": ["rag:postgres connection pool", "file:src/db.py"]},
        {"task_id": "writer", "agent": "echo", "description": "Implement the postgres adapter writer",
         "dependencies": ["schema"], "context_requirements": ["pattern:postgres-adapter"]},
        {"task_id": "reader", "agent": "echo", "description": "Implement the postgres adapter reader",
         "dependencies": ["schema"], "input_data": {"fail": True} if fail == "reader" else {}},
        {"task_id": "tests", "agent": "echo", "description": "Test the postgres adapter reader and writer",
         "dependencies": ["writer", "reader"]},
    ]
    for i in range(n_extra):
        tasks.append({"task_id": f"extra-{i}", "agent": "sleep", "description": f"Postgres adapter chunk {i}",
                      "input_data": {"duration_ms": sleep_ms}})
    return json.dumps({"user_prompt": "Build a postgres adapter with a connection pool, reader and writer",
                       "workspace_path": str(workspace), "rag_queries": ["postgres connection pool"],
                       "tasks": tasks, "config": {"max_workers": 8, "timeout_seconds": 30}})


def make_workspace(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "db.py").write_text(
        "import psycopg\n\nclass ConnectionPool:\n    \"\"\"A postgres connection pool.\"\"\"\n"
        "    def __init__(self, dsn, size=4):\n        self.dsn = dsn\n        self.size = size\n")
    (root / "src" / "auth.py").write_text("def login(user, password):\n    return user == 'admin'\n")
    (root / "README.md").write_text("# demo\nA postgres adapter with a connection pool.\n")
    return root


def executed(output: dict) -> list[str]:
    return [p["phase"] for p in output["phases_executed"] if not p["skipped"]]


def assert_guide_output_shape(output: dict) -> None:
    assert set(output) >= {"success", "timing_summary", "phases_executed", "run_id"}
    summary = output["timing_summary"]
    assert summary["total_duration_ms"] > 0
    for phase in summary["phases"]:
        assert set(phase) == {"phase", "duration_ms", "success", "skipped"}
        assert phase["phase"] in PHASES
    for result in output["phases_executed"]:
        assert set(result) >= {"phase", "phase_name", "success", "duration_ms", "started_at", "completed_at",
                               "output_data", "error", "skipped", "retry_count"}
        if not result["skipped"]:
            assert result["started_at"].endswith("Z") and result["completed_at"].endswith("Z")
