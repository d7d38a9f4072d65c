"""The workspace index: retrieval quality, what it skips, and incremental updates."""
from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from dispatch.context import index as index_module
from dispatch.context.chunking import ChunkOptions, chunk_lines
from dispatch.context.index import WorkspaceIndex, index_path
from dispatch.context.terms import fts_query

FIXTURE = Path(__file__).parent / "fixtures" / "context_repo"

KNOWN_ANSWERS = {
    "database writer effect node": "src/db_writer.py",
    "retry exponential backoff timeout": "src/http_client.py",
    "circuit breaker half-open cooldown": "src/circuit_breaker.py",
    "ONEX architecture patterns": "docs/architecture.md",
    "LRU cache eviction TTL": "src/cache.py",
    "orchestrator consume orders queue": "src/orders.py",
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(FIXTURE, root)
    return root


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def search(ix: WorkspaceIndex, query: str, k: int = 5) -> list[str]:
    match = fts_query(query)
    assert match is not None
    return [hit.path for hit in ix.search(match, k)]


@pytest.mark.parametrize("query,expected", sorted(KNOWN_ANSWERS.items()))
def test_the_right_file_ranks_first(repo: Path, cache: Path, query: str, expected: str) -> None:
    with WorkspaceIndex(repo, cache) as ix:
        ix.update()
        assert search(ix, query)[0] == expected


def test_hits_point_at_line_ranges_holding_the_text(repo: Path, cache: Path) -> None:
    with WorkspaceIndex(repo, cache) as ix:
        ix.update()
        hit = ix.search(fts_query("rollback"), 1)[0]
    lines = (repo / hit.path).read_text().splitlines(keepends=True)
    assert "".join(lines[hit.start - 1:hit.end]) == hit.body
    assert "rollback" in hit.body


def test_gitignore_is_honoured_at_every_level(repo: Path, cache: Path) -> None:
    (repo / ".gitignore").write_text("*.log\nbuild/\n")
    (repo / "debug.log").write_text("zanzibar in a log file\n")
    (repo / "build").mkdir()
    (repo / "build" / "out.py").write_text("zanzibar in build output\n")
    (repo / "src" / ".gitignore").write_text("generated_*.py\n!generated_keep.py\n")
    (repo / "src" / "generated_x.py").write_text("zanzibar generated\n")
    (repo / "src" / "generated_keep.py").write_text("zanzibar kept on purpose\n")
    (repo / ".git").mkdir()
    (repo / ".git" / "HEAD").write_text("zanzibar ref\n")
    with WorkspaceIndex(repo, cache) as ix:
        ix.update()
        assert search(ix, "zanzibar") == ["src/generated_keep.py"]


def test_binaries_and_huge_files_are_skipped_but_remembered(repo: Path, cache: Path, monkeypatch) -> None:
    (repo / "blob.bin").write_bytes(b"zanzibar\x00\x01\x02" * 100)
    (repo / "huge.txt").write_text("zanzibar\n" * 2000)
    with WorkspaceIndex(repo, cache, max_bytes=10_000) as ix:
        stats = ix.update()
        assert (stats.skipped_binary, stats.skipped_large) == (1, 1)
        assert search(ix, "zanzibar") == []
        reads: list[str] = []
        real = index_module.read_bytes
        monkeypatch.setattr(index_module, "read_bytes", lambda p, n: reads.append(p) or real(p, n))
        again = ix.update()
    assert reads == [] and again.read == 0  # not re-read just to be skipped again


def test_incremental_update_rereads_only_what_changed(repo: Path, cache: Path, monkeypatch) -> None:
    with WorkspaceIndex(repo, cache) as ix:
        first = ix.update()
        assert first.added == first.files_seen == 8 and first.rebuilt
    reads: list[str] = []
    real = index_module.read_bytes
    monkeypatch.setattr(index_module, "read_bytes", lambda p, n: reads.append(p) or real(p, n))

    edited = repo / "src" / "cache.py"
    edited.write_text(edited.read_text() + "\n# quokka: eviction counters\n")
    (repo / "src" / "circuit_breaker.py").unlink()
    (repo / "src" / "new_module.py").write_text("wombat = 'fresh file'\n")
    with WorkspaceIndex(repo, cache) as ix:  # a new process: the index comes from disk
        stats = ix.update()
        assert not stats.rebuilt
        assert (stats.updated, stats.deleted, stats.added, stats.read) == (1, 1, 1, 2)
        assert sorted(Path(p).name for p in reads) == ["cache.py", "new_module.py"]
        assert search(ix, "quokka") == ["src/cache.py"]
        assert search(ix, "wombat") == ["src/new_module.py"]
        assert search(ix, "circuit breaker cooldown")[:1] != ["src/circuit_breaker.py"]
        assert "src/circuit_breaker.py" not in {p for p, _, _ in ix.files()}


def test_touched_file_with_same_content_is_hashed_not_rechunked(repo: Path, cache: Path) -> None:
    with WorkspaceIndex(repo, cache) as ix:
        ix.update()
        chunks = ix.chunk_count()
        path = repo / "README.md"
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
        stats = ix.update()
        assert (stats.read, stats.touched_same_content, stats.updated, stats.chunks_written) == (1, 1, 0, 0)
        assert ix.chunk_count() == chunks
        assert ix.update().read == 0


def test_index_lives_in_the_cache_keyed_by_workspace(repo: Path, cache: Path) -> None:
    before = set(p.name for p in repo.rglob("*"))
    with WorkspaceIndex(repo, cache) as ix:
        ix.update()
        assert ix.db_path == index_path(cache, repo) and ix.db_path.parent == cache.resolve()
    assert set(p.name for p in repo.rglob("*")) == before  # nothing written into the workspace
    assert index_path(cache, repo) != index_path(cache, repo / "src")


def test_cache_inside_the_workspace_is_not_indexed(repo: Path) -> None:
    with WorkspaceIndex(repo, repo / "state" / "index") as ix:
        ix.update()
        assert ix.update().read == 0  # its own WAL churn is never seen as a change
        assert not [p for p, _, _ in ix.files() if p.startswith("state/")]


def test_corrupt_index_is_rebuilt(repo: Path, cache: Path) -> None:
    cache.mkdir()
    index_path(cache, repo).write_bytes(b"not a database at all" * 100)
    with WorkspaceIndex(repo, cache) as ix:
        assert ix.update().rebuilt
        assert search(ix, "rollback")[0] == "src/db_writer.py"


def test_changed_options_rebuild_the_index(repo: Path, cache: Path) -> None:
    with WorkspaceIndex(repo, cache) as ix:
        ix.update()
    with WorkspaceIndex(repo, cache, max_bytes=500) as ix:
        stats = ix.update()
        assert stats.rebuilt and stats.skipped_large > 0


def test_search_is_safe_for_any_text(repo: Path, cache: Path) -> None:
    with WorkspaceIndex(repo, cache) as ix:
        ix.update()
        for text in ['"unbalanced', "NEAR(a b)", "col:value", "a AND OR NOT", "x* ^y", "'; DROP TABLE files; --"]:
            match = fts_query(text)
            if match:
                ix.search(match, 3)  # must not raise sqlite3.OperationalError
        assert fts_query("!!! ???") is None


def test_chunks_cover_every_line_once_and_prefer_blank_lines() -> None:
    lines = []
    for block in range(20):
        lines += [f"def f{block}_{i}(): pass\n" for i in range(9)] + ["\n"]
    ranges = chunk_lines(lines, ChunkOptions(target=50, min_lines=30, max_lines=70))
    assert ranges[0][0] == 0 and ranges[-1][1] == len(lines)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(lines[end - 1] == "\n" for _, end in ranges[:-1])
    huge = ["x" * 5000 + "\n"] * 4
    assert chunk_lines(huge) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_two_writers_do_not_corrupt_the_index(repo: Path, cache: Path) -> None:
    a, b = WorkspaceIndex(repo, cache), WorkspaceIndex(repo, cache)
    try:
        a.update()
        (repo / "src" / "late.py").write_text("platypus\n")
        assert b.update().added == 1
        assert a.update().read == 0
        assert search(a, "platypus") == ["src/late.py"]
    finally:
        a.close()
        b.close()
    assert sqlite3.connect(index_path(cache, repo)).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_rare_term_gate_keeps_the_answers(repo: Path, cache: Path, monkeypatch) -> None:
    with WorkspaceIndex(repo, cache) as ix:
        ix.update()
        plain = {q: [h.path for h in ix.query(q, 3)] for q in KNOWN_ANSWERS}
        monkeypatch.setattr(index_module, "GATE_MIN_CHUNKS", 0)
        monkeypatch.setattr(index_module, "GATE_COMMON_SHARE", 0.3)
        assert ix._gate("stock node rollback", '"x"').startswith('("rollback") AND (')
        for query, expected in KNOWN_ANSWERS.items():
            assert [h.path for h in ix.query(query, 3)][0] == plain[query][0] == expected
