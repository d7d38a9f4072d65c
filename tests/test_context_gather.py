"""Phase 0: queries, fusion and dedup, the budget, the structure item, failures."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch.config import ComponentConfig, ContextOptions, DispatchConfig
from dispatch.context import ContextGatheringError, gather_context, summarize_context
from dispatch.context.budget import fit_budget, fuse, merge_overlaps
from dispatch.context.terms import derive_queries, fts_query, query_terms
from dispatch.context.tokens import count_tokens, trim_to_tokens
from dispatch.models import ContextItem, DispatchInput, TaskSpec

FIXTURE = Path(__file__).parent / "fixtures" / "context_repo"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(FIXTURE, root)
    return root


def request(repo: Path, queries: list[str], prompt: str = "", tasks: list[TaskSpec] | None = None) -> DispatchInput:
    tasks = tasks or [TaskSpec(task_id="t1", agent="coder", description="Generate database writer Effect node")]
    return DispatchInput(user_prompt=prompt, workspace_path=str(repo), rag_queries=queries, tasks=tasks)


def config(budget: int = 5000) -> DispatchConfig:
    return DispatchConfig(context=ContextOptions(budget_tokens=budget))


def spans(ctx) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for item in ctx.items:
        if "start" in item.metadata:
            out.setdefault(item.metadata["path"], []).append((item.metadata["start"], item.metadata["end"]))
    return out


def test_gathers_ranked_budgeted_context(repo: Path, tmp_path: Path) -> None:
    queries = ["database writer effect node", "ONEX architecture patterns"]
    ctx = gather_context(request(repo, queries), config(), cache_dir=tmp_path / "cache")
    assert ctx.queries == queries and ctx.budget_tokens == 5000
    assert ctx.items[0].kind == "structure"
    assert {ctx.items[1].source, ctx.items[2].source} == {"src/db_writer.py", "docs/architecture.md"}
    assert ctx.total_tokens == sum(i.tokens for i in ctx.items) <= 5000
    assert all(ctx.per_query_hits[q] > 0 for q in queries)
    assert set(ctx.retriever_timings_ms) == {"workspace"} and ctx.errors == []
    for item in ctx.items[1:]:
        lines = (repo / item.metadata["path"]).read_text().splitlines(keepends=True)
        assert "".join(lines[item.metadata["start"] - 1:item.metadata["end"]]) == item.content
        assert item.id == f"{item.source}:{item.metadata['start']}-{item.metadata['end']}"
        assert item.retriever == "workspace" and item.query in queries and item.tokens == count_tokens(item.content)


def test_same_range_from_two_queries_counts_once(repo: Path, tmp_path: Path) -> None:
    queries = ["circuit breaker", "breaker cooldown half-open", "consecutive failures threshold"]
    ctx = gather_context(request(repo, queries), config(), cache_dir=tmp_path / "cache")
    ids = [i.id for i in ctx.items]
    assert len(ids) == len(set(ids))
    breaker = next(i for i in ctx.items if i.source == "src/circuit_breaker.py")
    assert {h["query"] for h in breaker.metadata["hits"]} == set(queries)
    assert breaker.score > 1.0 and ctx.items[1] is breaker  # found three times: ranked first
    for ranges in spans(ctx).values():
        ranges.sort()
        assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))


def test_small_budget_trims_the_item_and_its_range(repo: Path, tmp_path: Path) -> None:
    ctx = gather_context(request(repo, ["database writer transaction rollback"]), config(budget=150),
                         cache_dir=tmp_path / "cache")
    assert 0 < ctx.total_tokens <= 150
    trimmed = [i for i in ctx.items if "trimmed_from" in i.metadata]
    assert trimmed
    item = trimmed[0]
    lines = (repo / item.source).read_text().splitlines(keepends=True)
    assert "".join(lines[item.metadata["start"] - 1:item.metadata["end"]]) == item.content


def test_queries_are_derived_when_none_are_given(repo: Path, tmp_path: Path) -> None:
    tasks = [TaskSpec(task_id="a", agent="coder", description="Generate database writer Effect node"),
             TaskSpec(task_id="b", agent="coder", description="Generate the database writer effect node"),
             TaskSpec(task_id="c", agent="coder", description="Add an LRU cache with TTL eviction")]
    req = request(repo, [], prompt="Build two ONEX nodes for the inventory service. Keep it fast.", tasks=tasks)
    assert derive_queries(req) == ["build onex nodes inventory service", "keep fast",
                                   "database writer effect node", "lru cache ttl eviction"]
    ctx = gather_context(req, config(), cache_dir=tmp_path / "cache")
    assert ctx.queries == derive_queries(req)
    assert {"src/db_writer.py", "src/cache.py"} <= {i.source for i in ctx.items}


def test_structure_item_summarises_the_tree(repo: Path, tmp_path: Path) -> None:
    (repo / "logo.png").write_bytes(b"\x89PNG\x00\x00binary")
    ctx = gather_context(request(repo, ["cache"]), config(), cache_dir=tmp_path / "cache")
    structure = ctx.items[0]
    assert structure.id == "structure:workspace" and structure.kind == "structure"
    assert "9 files" in structure.content and "(1 binary)" in structure.content
    assert "Python 6" in structure.content and "Markdown 2" in structure.content
    assert "src/ (5)" in structure.content and "README.md" in structure.content
    assert structure.metadata["index"]["files_seen"] == 9


def test_missing_or_file_workspace_is_a_gathering_error(tmp_path: Path) -> None:
    with pytest.raises(ContextGatheringError, match="does not exist"):
        gather_context(request(tmp_path / "nope", ["x"]), config(), cache_dir=tmp_path / "cache")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ContextGatheringError, match="not a directory"):
        gather_context(request(tmp_path / "file.txt", ["x"]), config(), cache_dir=tmp_path / "cache")


def test_unknown_retriever_kind_fails_gathering_with_its_name(repo: Path, tmp_path: Path) -> None:
    cfg = DispatchConfig(retrievers={"vec": ComponentConfig(kind="semantic")})
    with pytest.raises(ContextGatheringError, match="unknown retriever kind 'semantic'"):
        gather_context(request(repo, ["x"]), cfg, cache_dir=tmp_path / "cache")


def test_one_broken_retriever_among_two_is_recorded(repo: Path, tmp_path: Path) -> None:
    cfg = DispatchConfig(retrievers={"workspace": ComponentConfig(kind="workspace"),
                                     "kb": ComponentConfig(kind="http")})  # no url
    ctx = gather_context(request(repo, ["cache eviction"]), cfg, cache_dir=tmp_path / "cache")
    assert ctx.errors == ["kb: retrievers.kb.url: required for an http retriever"]
    assert any(i.source == "src/cache.py" for i in ctx.items)


def test_default_cache_is_under_the_user_cache_dir(repo: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    gather_context(request(repo, ["cache"]), config(), cache_dir=None)
    assert len(list((tmp_path / "xdg" / "dispatch" / "index").glob("workspace-*.sqlite3"))) == 1


def test_summary_is_small_and_informative(repo: Path, tmp_path: Path) -> None:
    queries = ["circuit breaker", "LRU cache"]
    ctx = gather_context(request(repo, queries), config(), cache_dir=tmp_path / "cache")
    summary = summarize_context(ctx)
    assert summary["items"] == len(ctx.items) and summary["tokens"] == ctx.total_tokens
    assert summary["per_query_hits"] == ctx.per_query_hits
    assert all(summary["per_query_kept"][q] >= 1 for q in queries)
    assert summary["top_sources"][0]["source"] in {"src/circuit_breaker.py", "src/cache.py"}
    assert summary["index"]["files_seen"] == 8 and "workspace" in summary["retriever_timings_ms"]
    assert len(str(summary)) < 4000


# --------------------------------------------------------------- pure parts
def item(id_: str, tokens: int, path: str | None = None, start: int = 0, end: int = 0, content: str = "") -> ContextItem:
    meta = {"path": path, "start": start, "end": end} if path else {}
    content = content or "word " * tokens
    return ContextItem(id=id_, source=path or id_, content=content, tokens=count_tokens(content), metadata=meta)


def test_overlapping_ranges_merge_and_contained_ones_fold() -> None:
    lines = [f"line {n}\n" for n in range(1, 41)]
    a = item("f.py:1-20", 0, "f.py", 1, 20, "".join(lines[0:20]))
    b = item("f.py:11-30", 0, "f.py", 11, 30, "".join(lines[10:30]))
    c = item("f.py:12-15", 0, "f.py", 12, 15, "".join(lines[11:15]))
    d = item("f.py:31-40", 0, "f.py", 31, 40, "".join(lines[30:40]))
    merged = sorted(merge_overlaps([a, b, c, d]), key=lambda i: i.id)
    assert [i.id for i in merged] == ["f.py:1-30", "f.py:31-40"]
    assert merged[0].content == "".join(lines[0:30])


def test_fusion_rewards_items_found_by_more_queries() -> None:
    x, y, z = item("x", 5), item("y", 5), item("z", 5)
    ranked = fuse([[x, y], [y, z], [y]])
    assert [i.id for i in ranked] == ["y", "x", "z"] and len(ranked[0].metadata["hits"]) == 3


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(min_value=0, max_value=400), max_size=30),
       budget=st.integers(min_value=1, max_value=3000))
def test_budget_is_never_exceeded(sizes: list[int], budget: int) -> None:
    items = [item(f"f{n}.py:1-{max(1, s)}", s, f"f{n}.py", 1, max(1, s),
                  "".join(f"tok{k} = {k}\n" for k in range(s))) for n, s in enumerate(sizes)]
    kept, used = fit_budget(items, budget)
    assert used == sum(i.tokens for i in kept) <= budget
    assert all(i.tokens == count_tokens(i.content) for i in kept)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=2000), limit=st.integers(min_value=0, max_value=300))
def test_trim_gives_a_prefix_within_the_limit(text: str, limit: int) -> None:
    out, tokens, _ = trim_to_tokens(text, limit)
    assert text.startswith(out) and tokens == count_tokens(out) <= limit


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budget=st.integers(min_value=1, max_value=2500),
       queries=st.lists(st.sampled_from(["cache", "database writer", "retry backoff", "ONEX nodes", "queue"]),
                        min_size=1, max_size=4))
def test_gathering_never_exceeds_its_budget(repo: Path, tmp_path: Path, budget: int, queries: list[str]) -> None:
    ctx = gather_context(request(repo, queries), config(budget), cache_dir=tmp_path / "cache")
    assert ctx.total_tokens == sum(i.tokens for i in ctx.items) <= budget


def test_token_estimate_is_sane() -> None:
    prose = "The quick brown fox jumps over the lazy dog and keeps running far away."
    assert 12 <= count_tokens(prose) <= 20
    code = "def gather_context(request: DispatchInput) -> GlobalContext:\n    return None\n"
    assert len(code) / 6 <= count_tokens(code) <= len(code) / 2
    assert count_tokens("") == 0 and count_tokens("日本語") == 3


def test_fts_query_quotes_every_term() -> None:
    assert fts_query('say "hi" to col:x NEAR(y)') == '"say" OR "hi" OR "col" OR "near"'
    assert fts_query("circuit breaker") == '"circuit breaker" OR "circuit" OR "breaker"'
    assert fts_query("the of and") == '"the" OR "of" OR "and"'
    assert query_terms("GlobalContext gather_context") == ["globalcontext", "global", "context", "gather"]
