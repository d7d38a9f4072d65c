"""The git workspace engine on real repositories made in tmp dirs: base snapshot, per-task
checkouts and commits, start commits from dependencies, integration, resolver, apply and diff."""
from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest

from dispatch.models import FileChange, TaskSpec, WorkspaceInfo
from dispatch.workspace import (StartConflict, WorkspaceError, WorkspaceOptions, WorkspaceUsageError,
                                apply_integration, commit_checkout, integrate, prepare_checkout, scope_fault,
                                snapshot_base, task_patch)
from dispatch.workspace.cache import Cache

CALC = "def add(a, b):\n    return a + b\n\n\n# more functions below\n"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "The User")
    git(path, "config", "user.email", "user@example.invalid")
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def fingerprint(repo: Path) -> dict:
    """What the user sees: HEAD, the index file's bytes, status, stash, branches and tags."""
    index = hashlib.sha256((repo / ".git" / "index").read_bytes()).hexdigest()
    return {"index": index, "head": git(repo, "rev-parse", "HEAD"),
            "status": git(repo, "status", "--porcelain=v2", "--untracked-files=all", "--branch"),
            "stash": git(repo, "stash", "list"),
            "refs": git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads", "refs/tags",
                        "refs/stash")}


def task(task_id: str, deps=(), writes=(), description="") -> TaskSpec:
    return TaskSpec(task_id=task_id, agent="shell", description=description or f"task {task_id}",
                    dependencies=list(deps), writes=list(writes))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "user", {"calc.py": CALC, "README.md": "# calc\n", ".gitignore": "*.env\nbuild/\n"})


@pytest.fixture
def cache_root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def run_task(info: WorkspaceInfo, spec: TaskSpec, edit, options: WorkspaceOptions, cache_root: Path, deps=(),
             succeeded=True):
    checkout = prepare_checkout(info, spec.task_id, list(deps), options, cache_root=cache_root)
    edit(checkout.workdir)
    return checkout, commit_checkout(checkout, spec, options, succeeded=succeeded)


def write(name: str, text: str):
    def edit(workdir: Path) -> None:
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_text(text)
    return edit


def show(repo_or_cache, rev: str, path: str, git_dir: bool = False) -> str:
    args = (["--git-dir", str(repo_or_cache)] if git_dir else []) + ["show", f"{rev}:{path}"]
    return subprocess.run(["git", *args], cwd=None if git_dir else repo_or_cache, check=True,
                          capture_output=True, text=True).stdout


# ---------------------------------------------------------------------------------- base
def test_snapshot_holds_what_the_user_sees_and_touches_nothing(repo: Path):
    (repo / "calc.py").write_text(CALC + "# edited, not staged\n")
    (repo / "staged.py").write_text("STAGED = 1\n")
    git(repo, "add", "staged.py")
    (repo / "untracked.txt").write_text("new and untracked\n")
    (repo / "secret.env").write_text("TOKEN=do-not-copy\n")
    git(repo, "status")  # let git refresh its own index first: we compare against a settled state
    before = fingerprint(repo)

    info = snapshot_base(repo, WorkspaceOptions(), "run1")

    assert fingerprint(repo) == before
    assert info.isolation == "git" and info.snapshot and info.source == "worktree"
    assert info.head == before["head"] and info.base != info.head
    assert git(repo, "rev-parse", "refs/dispatch/run1/base") == info.base
    assert git(repo, "rev-parse", f"{info.base}^") == info.head
    files = set(git(repo, "ls-tree", "-r", "--name-only", info.base).splitlines())
    assert files == {"calc.py", "README.md", ".gitignore", "staged.py", "untracked.txt"}
    assert show(repo, info.base, "calc.py").endswith("# edited, not staged\n")


def test_clean_tree_base_is_head_and_base_ref_is_honoured(repo: Path):
    head = git(repo, "rev-parse", "HEAD")
    info = snapshot_base(repo, WorkspaceOptions(), "run2")
    assert info.base == head and not info.snapshot
    (repo / "README.md").write_text("# changed\n")
    git(repo, "commit", "-qam", "second")
    info = snapshot_base(repo, WorkspaceOptions(base_ref="HEAD~1"), "run3")
    assert info.base == head and info.source == "HEAD~1"
    with pytest.raises(WorkspaceUsageError, match="base_ref 'nope'") as err:
        snapshot_base(repo, WorkspaceOptions(base_ref="nope"), "run4")
    assert err.value.exit_code == 2


def test_auto_is_shared_outside_a_repository(tmp_path: Path):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert snapshot_base(plain, WorkspaceOptions(), "r").isolation == "shared"
    with pytest.raises(WorkspaceUsageError, match='isolation = "git"'):
        snapshot_base(plain, WorkspaceOptions(isolation="git"), "r")


def test_distributed_without_a_remote_says_what_to_configure(repo: Path):
    with pytest.raises(WorkspaceUsageError, match=r'\[workspace\] remote = "<url>"'):
        snapshot_base(repo, WorkspaceOptions(), "r", distributed=True)


def test_git_environment_cannot_redirect_dispatch(repo: Path, tmp_path: Path, monkeypatch):
    other = make_repo(tmp_path / "other", {"x": "x\n"})
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "bogus-index"))
    info = snapshot_base(repo, WorkspaceOptions(), "r")
    assert info.repo == str(repo)
    assert subprocess.run(["git", "-C", str(repo), "rev-parse", "refs/dispatch/r/base"],
                          env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
                          capture_output=True, text=True).stdout.strip() == info.base


# ---------------------------------------------------------------------------------- tasks
def test_two_parallel_tasks_on_one_file_lose_nothing(repo: Path, cache_root: Path):
    before = fingerprint(repo)
    info = snapshot_base(repo, WorkspaceOptions(), "par")
    options = WorkspaceOptions()
    barrier = threading.Barrier(2, timeout=60)
    results: dict[str, object] = {}

    def agent(task_id: str, function: str) -> None:
        try:
            checkout = prepare_checkout(info, task_id, [], options, cache_root=cache_root)
            barrier.wait()  # both checkouts exist at once, as two parallel agents
            calc = checkout.workdir / "calc.py"
            calc.write_text(calc.read_text() + function)
            barrier.wait()
            results[task_id] = commit_checkout(checkout, task(task_id), options)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread below
            barrier.abort()
            results[task_id] = exc

    threads = [threading.Thread(target=agent, args=("mul", "\ndef mul(a, b):\n    return a * b\n")),
               threading.Thread(target=agent, args=("sub", "\ndef sub(a, b):\n    return a - b\n"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mul, sub = results["mul"], results["sub"]
    for outcome in (mul, sub):
        if isinstance(outcome, BaseException):
            raise outcome
    assert mul.files == [FileChange(path="calc.py", added=3, deleted=0)] == sub.files
    assert "+def mul(a, b):" in mul.patch and "def sub" not in mul.patch

    integration = integrate(info, [("mul", mul.commit), ("sub", sub.commit)], cache_root=cache_root)
    assert integration.merged == ["mul"]
    assert [c.model_dump() for c in integration.conflicts] == [
        {"task_id": "sub", "files": ["calc.py"], "with": ["mul"],
         "reason": "conflicts with the merged change of mul"}]
    branch = "refs/heads/dispatch/par"
    assert "def mul" in show(repo, branch, "calc.py")
    assert "def sub" in show(repo, "refs/dispatch/par/tasks/sub", "calc.py")  # kept on its own ref
    after = fingerprint(repo)
    assert after.pop("refs").replace(f"{branch} {integration.commit}\n", "") == before.pop("refs")
    assert after == before


def test_edits_in_different_places_of_one_file_both_survive(repo: Path, cache_root: Path):
    info = snapshot_base(repo, WorkspaceOptions(), "both")
    options = WorkspaceOptions()
    _, top = run_task(info, task("top"), write("calc.py", "import math\n" + CALC), options, cache_root)
    _, end = run_task(info, task("end"), write("calc.py", CALC + "\ndef neg(a):\n    return -a\n"), options,
                      cache_root)
    integration = integrate(info, [("top", top.commit), ("end", end.commit)], cache_root=cache_root)
    assert integration.merged == ["top", "end"] and not integration.conflicts
    merged = show(repo, integration.ref, "calc.py")
    assert merged.startswith("import math\n") and merged.endswith("return -a\n")


def test_dependent_starts_from_both_dependencies_and_integration_holds_all(repo: Path, cache_root: Path):
    info = snapshot_base(repo, WorkspaceOptions(), "dag")
    options = WorkspaceOptions()
    _, a = run_task(info, task("a"), write("a.py", "A = 1\n"), options, cache_root)
    _, b = run_task(info, task("b"), write("b.py", "B = 2\n"), options, cache_root)
    seen = {}

    def check_both(workdir: Path) -> None:
        seen["a"], seen["b"] = (workdir / "a.py").read_text(), (workdir / "b.py").read_text()
        (workdir / "c.py").write_text("from a import A\nfrom b import B\nC = A + B\n")

    checkout, c = run_task(info, task("c", deps=["a", "b"]), check_both, options, cache_root,
                           deps=[("a", a.commit), ("b", b.commit)])
    assert seen == {"a": "A = 1\n", "b": "B = 2\n"}
    assert checkout.dependency_changes == {"a": ["a.py"], "b": ["b.py"]}
    assert c.files == [FileChange(path="c.py", added=3)]  # only its own change, not its dependencies'
    assert c.base != info.base and not checkout.path.exists()  # removed (keep is off)

    integration = integrate(info, [("a", a.commit), ("b", b.commit), ("c", c.commit)], cache_root=cache_root)
    assert integration.merged == ["a", "b", "c"] and not integration.conflicts
    tree = set(git(repo, "ls-tree", "-r", "--name-only", integration.ref).splitlines())
    assert {"a.py", "b.py", "c.py", "calc.py"} <= tree
    assert "+C = A + B" in task_patch(repo, "dag", "c")
    whole = task_patch(repo, "dag")
    assert all(f"+++ b/{name}" in whole for name in ("a.py", "b.py", "c.py"))


def test_conflicting_dependencies_stop_the_dependent(repo: Path, cache_root: Path):
    info = snapshot_base(repo, WorkspaceOptions(), "sc")
    options = WorkspaceOptions()
    _, x = run_task(info, task("x"), write("README.md", "# x\n"), options, cache_root)
    _, y = run_task(info, task("y"), write("README.md", "# y\n"), options, cache_root)
    with pytest.raises(StartConflict) as err:
        prepare_checkout(info, "z", [("x", x.commit), ("y", y.commit)], options, cache_root=cache_root)
    assert err.value.files == ["README.md"] and err.value.tasks == ["x", "y"]
    assert "README.md" in str(err.value) and err.value.exit_code == 1


def test_agent_commits_are_squashed_into_the_task_commit(repo: Path, cache_root: Path):
    info = snapshot_base(repo, WorkspaceOptions(), "own")

    def aider_like(workdir: Path) -> None:
        for name in ("one.py", "two.py"):
            (workdir / name).write_text(f"# {name}\n")
            git(workdir, "add", name)
            git(workdir, "-c", "user.name=agent", "-c", "user.email=a@x", "commit", "-q", "-m", f"add {name}")
        (workdir / "three.py").write_text("# not committed by the agent\n")

    _, changes = run_task(info, task("own"), aider_like, WorkspaceOptions(), cache_root)
    assert [f.path for f in changes.files] == ["one.py", "three.py", "two.py"]
    assert git(repo, "rev-parse", f"{changes.commit}^") == changes.base == info.base
    message = git(repo, "log", "-1", "--format=%an|%B", changes.commit)
    assert message.startswith("dispatch task own|dispatch task own")
    assert "add one.py" in message and "add two.py" in message and "Dispatch-Task: own" in message


def test_failed_task_keeps_its_partial_change_on_a_ref(repo: Path, cache_root: Path):
    info = snapshot_base(repo, WorkspaceOptions(), "fail")
    _, changes = run_task(info, task("half"), write("half.py", "x = 1\n"), WorkspaceOptions(), cache_root,
                          succeeded=False)
    assert changes.ref == "refs/dispatch/fail/failed/half"
    assert git(repo, "rev-parse", changes.ref) == changes.commit
    assert "+x = 1" in task_patch(repo, "fail", "half")
    with pytest.raises(WorkspaceUsageError, match="no change recorded"):
        task_patch(repo, "fail", "nobody")


def test_untouched_task_has_no_files_and_gitignore_is_honoured(repo: Path, cache_root: Path):
    (repo / "local.env").write_text("KEY=1\n")  # ignored in the user's tree
    info = snapshot_base(repo, WorkspaceOptions(), "ign")
    options = WorkspaceOptions(copy_untracked=["*.env"])
    copied = {}

    def build(workdir: Path) -> None:
        copied["env"] = (workdir / "local.env").read_text()
        (workdir / "build").mkdir()
        (workdir / "build" / "out.o").write_bytes(b"\0\1")

    _, changes = run_task(info, task("b"), build, options, cache_root)
    assert copied["env"] == "KEY=1\n" and changes.files == [] and changes.patch == ""
    assert changes.commit != changes.base  # still its own (empty) commit on its ref


def test_copied_files_are_never_committed_even_when_not_ignored(repo: Path, cache_root: Path):
    (repo / "notes.local").write_text("private\n")
    info = snapshot_base(repo, WorkspaceOptions(), "cp")
    (repo / "extra.local").write_text("made after the snapshot\n")  # untracked, not ignored, not in the base
    _, changes = run_task(info, task("t"), write("x.py", "1\n"), WorkspaceOptions(copy_untracked=["*.local"]),
                          cache_root)
    assert [f.path for f in changes.files] == ["x.py"]


def test_binary_files_and_the_patch_cap(repo: Path, cache_root: Path):
    info = snapshot_base(repo, WorkspaceOptions(), "cap")

    def big(workdir: Path) -> None:
        (workdir / "logo.png").write_bytes(bytes(range(256)) * 4)
        (workdir / "big.txt").write_text("".join(f"line {i}\n" for i in range(2000)))

    _, changes = run_task(info, task("t"), big, WorkspaceOptions(patch_max_bytes=1000), cache_root)
    assert changes.files == [FileChange(path="big.txt", added=2000), FileChange(path="logo.png", binary=True)]
    assert len(changes.patch.encode()) <= 1000 and changes.patch.endswith("\n")
    assert changes.patch_bytes > 20_000


def test_setup_runs_in_the_checkout_and_its_failure_is_typed(repo: Path, cache_root: Path):
    info = snapshot_base(repo, WorkspaceOptions(), "setup")
    options = WorkspaceOptions(setup=["sh", "-c", "mkdir -p build && pwd > build/where"])
    checkout = prepare_checkout(info, "t", [], options, cache_root=cache_root)
    assert (checkout.workdir / "build" / "where").read_text().strip() == str(checkout.workdir)
    assert commit_checkout(checkout, task("t"), options).files == []
    bad = WorkspaceOptions(setup=["sh", "-c", "echo npm exploded >&2; exit 3"])
    with pytest.raises(WorkspaceError, match="exit 3.*npm exploded"):
        prepare_checkout(info, "u", [], bad, cache_root=cache_root)
    assert not any((cache_root / "checkouts" / "setup").glob("u-*"))


def test_writes_outside_the_declared_scope_are_listed(repo: Path, cache_root: Path):
    info = snapshot_base(repo, WorkspaceOptions(), "scope")
    spec = task("t", writes=["src/**"])

    def edit(workdir: Path) -> None:
        write("src/calc2.py", "x = 1\n")(workdir)
        write("README.md", "# touched\n")(workdir)

    _, changes = run_task(info, spec, edit, WorkspaceOptions(), cache_root)
    assert changes.outside_scope == ["README.md"]
    assert scope_fault(changes, WorkspaceOptions()) is None
    assert "README.md" in scope_fault(changes, WorkspaceOptions(enforce_writes=True))


def test_keep_leaves_the_checkout(repo: Path, cache_root: Path):
    info = snapshot_base(repo, WorkspaceOptions(), "keep")
    checkout, changes = run_task(info, task("t"), write("k.py", "k\n"), WorkspaceOptions(keep=True), cache_root)
    assert changes.kept_checkout == str(checkout.path) and (checkout.path / "k.py").exists()
    cache = Cache(str(repo), cache_root)
    assert str(checkout.path) in subprocess.run(["git", "--git-dir", str(cache.dir), "worktree", "list"],
                                                capture_output=True, text=True).stdout


def test_workspace_in_a_subdirectory(tmp_path: Path, cache_root: Path):
    repo = make_repo(tmp_path / "mono", {"pkg/app.py": "x = 1\n", "other/o.py": "o\n"})
    info = snapshot_base(repo / "pkg", WorkspaceOptions(), "sub")
    assert info.subdir == "pkg"
    spec = task("t", writes=["app.py"])
    checkout, changes = run_task(info, spec, write("app.py", "x = 2\n"), WorkspaceOptions(), cache_root)
    assert checkout.workdir == checkout.path / "pkg"
    assert [f.path for f in changes.files] == ["pkg/app.py"] and changes.outside_scope == []


def test_task_ids_that_are_not_ref_names(repo: Path, cache_root: Path):
    info = snapshot_base(repo, WorkspaceOptions(), "odd")
    _, changes = run_task(info, task("fix calc/v2..x"), write("f.py", "f\n"), WorkspaceOptions(), cache_root)
    assert changes.ref.startswith("refs/dispatch/odd/tasks/fix_calc_v2")
    assert git(repo, "check-ref-format", changes.ref) == ""
    assert "+f" in task_patch(repo, "odd", "fix calc/v2..x")


# ---------------------------------------------------------------------------------- integration
def conflicting_pair(repo: Path, cache_root: Path, run_id: str):
    info = snapshot_base(repo, WorkspaceOptions(), run_id)
    _, mul = run_task(info, task("mul"), write("calc.py", CALC + "\ndef mul(a, b):\n    return a * b\n"),
                      WorkspaceOptions(), cache_root)
    _, sub = run_task(info, task("sub"), write("calc.py", CALC + "\ndef sub(a, b):\n    return a - b\n"),
                      WorkspaceOptions(), cache_root)
    return info, mul, sub


def test_resolver_completes_the_merge(repo: Path, cache_root: Path):
    info, mul, sub = conflicting_pair(repo, cache_root, "res")
    handed = {}

    def resolver(path: Path, conflict) -> bool:
        text = (path / "calc.py").read_text()
        handed.update(task=conflict.task_id, files=conflict.files, markers="<<<<<<<" in text)
        both = "\ndef mul(a, b):\n    return a * b\n\n\ndef sub(a, b):\n    return a - b\n"
        (path / "calc.py").write_text(CALC + both)
        return True

    integration = integrate(info, [("mul", mul.commit), ("sub", sub.commit)], resolver, cache_root=cache_root)
    assert handed == {"task": "sub", "files": ["calc.py"], "markers": True}
    assert integration.merged == ["mul", "sub"] and integration.resolved == ["sub"] and not integration.conflicts
    merged = show(repo, integration.ref, "calc.py")
    assert "def mul" in merged and "def sub" in merged
    assert git(repo, "rev-list", "--parents", "-1", integration.commit).count(" ") == 2  # a real merge


def test_resolver_leaving_markers_or_failing_reports_the_conflict(repo: Path, cache_root: Path):
    info, mul, sub = conflicting_pair(repo, cache_root, "res2")
    integration = integrate(info, [("mul", mul.commit), ("sub", sub.commit)], lambda path, c: True,
                            cache_root=cache_root)
    assert integration.merged == ["mul"] and "markers remain in calc.py" in integration.conflicts[0].reason

    def broken(path, conflict):
        raise RuntimeError("model unavailable")

    integration = integrate(info, [("mul", mul.commit), ("sub", sub.commit)], broken, cache_root=cache_root)
    assert "resolver failed: model unavailable" in integration.conflicts[0].reason
    assert integration.conflicts[0].with_ == ["mul"]


def test_dependents_of_a_left_out_task_are_left_out(repo: Path, cache_root: Path):
    info, mul, sub = conflicting_pair(repo, cache_root, "carry")
    _, dep = run_task(info, task("doc", deps=["sub"]), write("DOC.md", "sub docs\n"), WorkspaceOptions(),
                      cache_root, deps=[("sub", sub.commit)])
    integration = integrate(info, [("mul", mul.commit), ("sub", sub.commit), ("doc", dep.commit)],
                            cache_root=cache_root)
    assert integration.merged == ["mul"]
    assert [(c.task_id, c.with_) for c in integration.conflicts] == [("sub", ["mul"]), ("doc", ["sub"])]
    dropped = integrate(info, [("mul", mul.commit)], excluded=[("sub", sub.commit)], cache_root=cache_root)
    assert dropped.merged == ["mul"] and dropped.conflicts == []


def test_apply_merges_into_the_current_branch_and_refuses_a_dirty_tree(repo: Path, cache_root: Path):
    info = snapshot_base(repo, WorkspaceOptions(), "ap")
    _, a = run_task(info, task("a"), write("a.py", "A\n"), WorkspaceOptions(), cache_root)
    _, b = run_task(info, task("b"), write("b.py", "B\n"), WorkspaceOptions(), cache_root)
    integrate(info, [("a", a.commit), ("b", b.commit)], cache_root=cache_root)

    (repo / "README.md").write_text("# dirty\n")
    head = git(repo, "rev-parse", "HEAD")
    with pytest.raises(WorkspaceUsageError, match="uncommitted changes.*README.md") as err:
        apply_integration(repo, "ap")
    assert err.value.exit_code == 2 and git(repo, "rev-parse", "HEAD") == head
    assert (repo / "README.md").read_text() == "# dirty\n"

    git(repo, "checkout", "-q", "README.md")
    applied = apply_integration(repo, "ap")
    assert applied.branch == "main" and applied.before == head and applied.changed
    assert applied.tasks == ["a", "b"] and {f.path for f in applied.files} == {"a.py", "b.py"}
    assert (repo / "a.py").read_text() == "A\n" and git(repo, "status", "--porcelain") == ""
    again = apply_integration(repo, "ap")
    assert not again.changed and again.tasks == []
    with pytest.raises(WorkspaceUsageError, match="no branch dispatch/none"):
        apply_integration(repo, "none")


def test_apply_refuses_a_conflicting_merge_without_touching_anything(repo: Path, cache_root: Path):
    info = snapshot_base(repo, WorkspaceOptions(), "apc")
    _, t = run_task(info, task("t"), write("README.md", "# from the task\n"), WorkspaceOptions(), cache_root)
    integrate(info, [("t", t.commit)], cache_root=cache_root)
    (repo / "README.md").write_text("# the user moved on\n")
    git(repo, "commit", "-qam", "user edit")
    before = fingerprint(repo)
    with pytest.raises(WorkspaceError, match="conflicts with main in README.md; nothing was changed"):
        apply_integration(repo, "apc")
    assert fingerprint(repo) == before


def test_every_git_call_has_a_timeout(tmp_path: Path):
    import socket

    from dispatch.workspace.errors import GitError
    from dispatch.workspace.git import Git

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    try:
        started = __import__("time").monotonic()
        with pytest.raises(GitError, match="timed out after 1s"):
            Git(timeout=1).run("ls-remote", f"git://127.0.0.1:{silent.getsockname()[1]}/x.git")
        assert __import__("time").monotonic() - started < 5
    finally:
        silent.close()


def test_unborn_branch_snapshot_has_no_parent(tmp_path: Path, cache_root: Path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    git(fresh, "init", "-q", "-b", "main")
    (fresh / "start.py").write_text("print('hi')\n")
    info = snapshot_base(fresh, WorkspaceOptions(), "unborn")
    assert info.head is None and info.snapshot
    assert git(fresh, "rev-list", "--parents", "-1", info.base) == info.base
    assert git(fresh, "status", "--porcelain") == "?? start.py"
    _, changes = run_task(info, task("t"), write("start.py", "print('bye')\n"), WorkspaceOptions(), cache_root)
    assert changes.files == [FileChange(path="start.py", added=1, deleted=1)]
