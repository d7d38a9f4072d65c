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


def embedded_servers(under) -> list[str]:
    """Command lines of redis-server processes whose socket is under ``under``."""
    import os

    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and argv[0].endswith("redis-server") and any(str(under) in a for a in argv):
            found.append(" ".join(argv))
    return found


def test_embedded_runs_on_a_private_redis_server_that_ends_with_the_cli(cli, tmp_path):
    import shutil
    import time

    import pytest

    if not shutil.which("redis-server"):
        pytest.skip("no redis-server binary: embedded mode uses fakeredis")
    import tempfile
    from pathlib import Path

    private_tmp = Path(tempfile.mkdtemp(prefix="scale-", dir="/tmp"))  # short: a unix socket's path is limited
    done = cli("--skip-phases", "0,1", stdin=breakdown(6), extra_env={"TMPDIR": str(private_tmp)})
    assert done.returncode == 0, done.stderr
    assert [p.name.split("-")[:2] for p in private_tmp.iterdir()] == [["dispatch", "embedded"]]  # its socket folder
    deadline = time.monotonic() + 5
    while embedded_servers(private_tmp) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert embedded_servers(private_tmp) == []  # it ended with the CLI's process
    again = cli("--skip-phases", "0,1", stdin=breakdown(2), extra_env={"TMPDIR": str(private_tmp)})
    assert again.returncode == 0, again.stderr
    assert len(list(private_tmp.iterdir())) == 1  # the first run's folder was swept, the second's is left
    fake = cli("--skip-phases", "0,1", stdin=breakdown(3),
               extra_env={"TMPDIR": str(private_tmp), "DISPATCH_EMBEDDED_REDIS": "fakeredis"})
    assert fake.returncode == 0 and [r["task_id"] for r in fake.json["results"]] == ["t0", "t1", "t2"]
    shutil.rmtree(private_tmp, ignore_errors=True)
