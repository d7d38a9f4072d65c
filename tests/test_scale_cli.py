"""``--results-file`` from the CLI, embedded: one line per task, the same results as stdout; bad uses exit 2."""
import json


def breakdown(n: int) -> str:
    return json.dumps({"tasks": [{"task_id": f"t{i}", "agent": "echo", "description": f"task {i}",
                                  "dependencies": [f"t{i - 1}"] if i % 4 else []} for i in range(n)]})


def test_an_embedded_run_writes_one_line_per_task_with_the_results_on_stdout(cli, tmp_path):
    lines = tmp_path / "out" / "results.jsonl"
    lines.parent.mkdir()
    done = cli("--skip-phases", "0,1", "--results-file", str(lines), stdin=breakdown(12))
    assert done.returncode == 0, done.stderr
    written = {r["task_id"]: r for r in map(json.loads, lines.read_text().splitlines())}
    assert len(lines.read_text().splitlines()) == 12
    assert written == {r["task_id"]: r for r in done.json["results"]}


def test_bad_uses_of_results_file_are_refused_before_anything_runs(cli, tmp_path):
    missing = cli("--results-file", str(tmp_path / "no" / "such" / "dir.jsonl"), stdin=breakdown(1))
    assert missing.returncode == 2 and "--results-file" in missing.stderr and "Traceback" not in missing.stderr
    interactive = cli("-i", "--results-file", str(tmp_path / "r.jsonl"), stdin=breakdown(1))
    assert interactive.returncode == 2 and "--interactive" in interactive.stderr
    assert missing.stdout == interactive.stdout == ""
