"""P6: the added cost per task of a git workspace (checkout + commit + cleanup) on a 10k-file repository.

    .venv/bin/python bench/bench_workspace.py [--files 10000] [--repeat 7] [--dir /dev/shm]

Ours: ``prepare_checkout`` (a worktree of the worker's cache at the start commit) + one edited
file + ``commit_checkout`` (temporary index, commit, push of the task's ref to the user's repo,
numstat, capped patch) + removal.  Baselines on the same repository: a plain
``git worktree add`` + ``git add -A`` + ``git commit`` + ``git worktree remove``, and a plain
directory copy (``shutil.copytree`` of the work tree) + ``rmtree``.  Medians of ``repeat`` runs;
the one-time costs (base snapshot of a dirty tree, first fill of the cache) are printed apart.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dispatch.models import TaskSpec  # noqa: E402
from dispatch.workspace import WorkspaceOptions, commit_checkout, prepare_checkout, snapshot_base  # noqa: E402


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def generate(repo: Path, files: int) -> None:
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "bench")
    git(repo, "config", "user.email", "bench@example.invalid")
    per_dir = 100
    for i in range(files):
        path = repo / f"pkg{i // per_dir:03d}" / f"mod{i % per_dir:03d}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f'"""module {i}."""\n\n\ndef f{i}(x):\n    return x + {i}\n' + "# padding line\n" * 20)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "generated")


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(files: int = 10_000, repeat: int = 7, where: str | None = None) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-ws-", dir=where) as tmp:
        tmp_path = Path(tmp)
        repo = tmp_path / "repo"
        generate(repo, files)
        (repo / "pkg000" / "mod000.py").write_text("# the user's uncommitted edit\n")
        (repo / "UNTRACKED.md").write_text("untracked\n")
        options = WorkspaceOptions()
        cache_root = tmp_path / "cache"
        snapshot_s = timed(lambda: snapshot_base(repo, options, "bench"))
        info = snapshot_base(repo, options, "bench")
        counter = iter(range(10_000))

        def ours() -> None:
            task_id = f"t{next(counter)}"
            checkout = prepare_checkout(info, task_id, [], options, cache_root=cache_root)
            (checkout.workdir / "pkg001" / "mod001.py").write_text("def changed():\n    return 1\n")
            changes = commit_checkout(checkout, TaskSpec(task_id=task_id, agent="bench", description="bench"),
                                      options)
            assert [f.path for f in changes.files] == ["pkg001/mod001.py"]

        first_s = timed(ours)  # fills the cache: the worker's one-time cost
        bare = next(cache_root.glob("*.git"))

        def plain_worktree() -> None:
            path = tmp_path / f"plain-{next(counter)}"
            subprocess.run(["git", "--git-dir", str(bare), "worktree", "add", "-q", "--detach", str(path), info.base],
                           check=True, capture_output=True)
            (path / "pkg001" / "mod001.py").write_text("def changed():\n    return 1\n")
            git(path, "add", "-A")
            git(path, "-c", "user.name=b", "-c", "user.email=b@x", "commit", "-q", "-m", "task")
            subprocess.run(["git", "--git-dir", str(bare), "worktree", "remove", "--force", str(path)],
                           check=True, capture_output=True)

        def plain_copy() -> None:
            path = tmp_path / f"copy-{next(counter)}"
            shutil.copytree(repo, path, ignore=shutil.ignore_patterns(".git"))
            (path / "pkg001" / "mod001.py").write_text("def changed():\n    return 1\n")
            shutil.rmtree(path)

        samples = {"ours": [], "worktree": [], "copy": []}
        for _ in range(repeat):  # interleaved, so a noisy neighbour hits all three alike
            samples["ours"].append(timed(ours))
            samples["worktree"].append(timed(plain_worktree))
            samples["copy"].append(timed(plain_copy))
    ours_s, wt_s, copy_s = (statistics.median(samples[k]) for k in ("ours", "worktree", "copy"))
    return [
        {"name": f"P6 per task, {files} files: checkout+commit+cleanup vs git worktree add+commit+remove",
         "value": round(ours_s * 1000), "unit": "ms", "baseline": round(wt_s * 1000),
         "ratio": round(ours_s / wt_s, 2), "target": "(reference)"},
        {"name": f"P6 per task, {files} files: checkout+commit+cleanup vs plain directory copy+rmtree",
         "value": round(ours_s * 1000), "unit": "ms", "baseline": round(copy_s * 1000),
         "ratio": round(ours_s / copy_s, 2), "target": "(reference)"},
        {"name": f"P6 once per run: base snapshot of a dirty {files}-file tree (temporary index)",
         "value": round(snapshot_s * 1000), "unit": "ms", "baseline": "-", "ratio": "-", "target": "(reference)"},
        {"name": f"P6 once per worker: first task, filling the cache from the user's repo",
         "value": round(first_s * 1000), "unit": "ms", "baseline": "-", "ratio": "-", "target": "(reference)"},
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dir", help="where to make the repository (default: the system temp dir); "
                        "/dev/shm takes the disk out of the figures")
    args = parser.parse_args()
    for row in run(args.files, args.repeat, args.dir):
        print(row)
