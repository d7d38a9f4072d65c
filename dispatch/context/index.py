"""A persistent, incrementally updated full-text index of one workspace.

SQLite FTS5 with BM25 ranking: no server, one file, fast enough for tens of
thousands of files, and in the standard library.  The file lives in a cache
folder (never in the workspace), named by a hash of the resolved workspace path.

Tables:

* ``files``: one row per file seen, with mtime, size and a content hash, its
  status (``text``, ``binary`` or ``large``) and the rowid range of its chunks.
  Binary and huge files are remembered too, so they are not re-read every time.
* ``chunks``: the FTS5 table (``path``, ``body``, ``start``, ``end``); a file's
  chunks get contiguous rowids, so dropping a file is one range delete.
* ``meta``: what the index was built with; a mismatch rebuilds it.

:meth:`WorkspaceIndex.update` re-reads only files whose mtime or size changed,
skips re-chunking when their hash did not, and drops files that disappeared,
all in one write transaction with ``executemany`` batches.
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence

from dispatch.common.text import as_text
from dispatch.context.chunking import ChunkOptions, chunk_lines
from dispatch.context.terms import MAX_QUERY_TERMS, fts_query, query_terms, quote_term
from dispatch.context.hostfs import read_regular
from dispatch.context.walk import DEFAULT_EXCLUDES, FileEntry, iter_files, looks_binary

SCHEMA_VERSION = 3
TOKENIZER = "porter unicode61 remove_diacritics 2"
PATH_WEIGHT, BODY_WEIGHT = 4.0, 1.0
DEFAULT_MAX_BYTES = 1_000_000
FLUSH_ROWS = 20_000
GATE_MIN_CHUNKS = 30_000     # below this every query is cheap enough as it is
GATE_COMMON_SHARE = 0.02     # a term in more than 2% of chunks is "common"


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dispatch" / "index"


def index_path(cache_dir: Path, workspace: Path) -> Path:
    key = hashlib.sha256(str(workspace.resolve()).encode()).hexdigest()[:16]
    return cache_dir / f"workspace-{key}.sqlite3"


def read_bytes(path: str, limit: int) -> bytes:
    """Read at most ``limit`` bytes of a regular file (module-level so tests can watch reads); a file that
    is not one any more (a FIFO, a device, on a kernel file system) is an ``OSError``, skipped by the caller."""
    data = read_regular(path, limit)
    if data is None:
        raise OSError(f"{path}: not a regular file on an ordinary file system")
    return data


class Hit(NamedTuple):
    path: str
    start: int  # 1-based, inclusive
    end: int
    score: float  # higher is better (negated FTS5 bm25)
    body: str


@dataclass
class IndexStats:
    files_seen: int = 0
    files_indexed: int = 0
    unchanged: int = 0
    read: int = 0
    added: int = 0
    updated: int = 0
    touched_same_content: int = 0
    deleted: int = 0
    skipped_binary: int = 0
    skipped_large: int = 0
    chunks_written: int = 0
    rebuilt: bool = False
    duration_ms: float = 0.0
    changed_paths: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["changed_paths"] = self.changed_paths[:20]
        return data


class _Known(NamedTuple):
    mtime_ns: int
    size: int
    digest: bytes
    status: str
    lo: Optional[int]
    hi: Optional[int]


class WorkspaceIndex:
    """One workspace's index; open it, :meth:`update`, then :meth:`search`."""

    def __init__(self, workspace: Path, cache_dir: Optional[Path] = None, *,
                 max_bytes: int = DEFAULT_MAX_BYTES, excludes: Sequence[str] = DEFAULT_EXCLUDES,
                 chunking: ChunkOptions = ChunkOptions()) -> None:
        self.root = workspace.resolve()
        self.cache_dir = (cache_dir or default_cache_dir()).expanduser().resolve()
        self.db_path = index_path(self.cache_dir, self.root)
        self.max_bytes = max_bytes
        self.excludes = tuple(excludes)
        self.chunking = chunking
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._fresh = False
        self._total: Optional[int] = None
        self._stems: dict[str, str] = {}
        self._df: dict[str, int] = {}
        self._df_ready = False
        self.db = self._open()

    # ------------------------------------------------------------ lifecycle
    def _signature(self) -> dict[str, str]:
        return {"schema": str(SCHEMA_VERSION), "root": str(self.root), "tokenizer": TOKENIZER,
                "max_bytes": str(self.max_bytes), "excludes": "\n".join(self.excludes),
                "chunking": self.chunking.signature()}

    def _open(self) -> sqlite3.Connection:
        try:
            db = self._connect()
            if self._meta(db) == self._signature():
                return db
            db.close()
        except sqlite3.DatabaseError:  # corrupt or foreign file: rebuild
            pass
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.db_path) + suffix).unlink(missing_ok=True)
        db = self._connect()
        db.executescript(f"""
            CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS files(path TEXT PRIMARY KEY, mtime_ns INTEGER, size INTEGER,
                                             digest BLOB, status TEXT, lo INTEGER, hi INTEGER) WITHOUT ROWID;
            CREATE VIRTUAL TABLE IF NOT EXISTS chunks USING fts5(path, body, start UNINDEXED, end UNINDEXED,
                                                   tokenize='{TOKENIZER}');
        """)
        with db:
            db.executemany("INSERT OR REPLACE INTO meta VALUES(?, ?)", self._signature().items())
        self._fresh = True
        return db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @staticmethod
    def _meta(db: sqlite3.Connection) -> dict[str, str]:
        try:
            return dict(db.execute("SELECT key, value FROM meta"))
        except sqlite3.OperationalError:
            return {}

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "WorkspaceIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- update
    def update(self) -> IndexStats:
        """Bring the index in line with the workspace; returns what it did."""
        t0 = time.perf_counter()
        stats = IndexStats(rebuilt=self._fresh)
        self._fresh = False
        self._total, self._df = None, {}
        db = self.db
        db.execute("BEGIN IMMEDIATE")  # one writer at a time; readers carry on (WAL)
        try:
            known = {row[0]: _Known(*row[1:]) for row in db.execute(
                "SELECT path, mtime_ns, size, digest, status, lo, hi FROM files")}
            next_id = (db.execute("SELECT max(hi) FROM files").fetchone()[0] or 0) + 1
            writer = _BatchWriter(db)
            seen: set[str] = set()
            for entry in iter_files(self.root, self.excludes, skip_dirs=[self.cache_dir]):
                seen.add(entry.rel)
                next_id = self._visit(entry, known.get(entry.rel), next_id, writer, stats)
            gone = [p for p in known if p not in seen]
            for rel in gone:
                writer.drop(rel, known[rel])
            stats.deleted = len(gone)
            stats.changed_paths.extend(gone)
            writer.flush()
            stats.files_seen = len(seen)
            if stats.rebuilt and stats.chunks_written:
                db.execute("INSERT INTO chunks(chunks) VALUES('optimize')")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        stats.files_indexed = db.execute("SELECT count(*) FROM files WHERE status='text'").fetchone()[0]
        stats.duration_ms = round((time.perf_counter() - t0) * 1000, 1)
        return stats

    def _visit(self, entry: FileEntry, old: Optional[_Known], next_id: int,
               writer: "_BatchWriter", stats: IndexStats) -> int:
        if old and old.mtime_ns == entry.mtime_ns and old.size == entry.size:
            stats.unchanged += 1
            return next_id
        if entry.size > self.max_bytes:
            stats.skipped_large += 1
            writer.record(entry, b"", "large", None, None, old)
            return next_id
        try:
            data = read_bytes(entry.path, self.max_bytes + 1)
        except OSError:
            return next_id
        stats.read += 1
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if old and old.digest == digest and old.status != "large":
            stats.touched_same_content += 1
            writer.touch(entry)
            return next_id
        stats.changed_paths.append(entry.rel)
        if old:
            stats.updated += 1
        else:
            stats.added += 1
        if looks_binary(data):
            stats.skipped_binary += 1
            writer.record(entry, digest, "binary", None, None, old)
            return next_id
        lines = as_text(data).splitlines(keepends=True)
        ranges = chunk_lines(lines, self.chunking)
        lo = next_id
        for start, end in ranges:
            writer.add_chunk(next_id, entry.rel, "".join(lines[start:end]), start + 1, end)
            next_id += 1
        stats.chunks_written += len(ranges)
        writer.record(entry, digest, "text", lo if ranges else None, next_id - 1 if ranges else None, old)
        return next_id

    # --------------------------------------------------------------- search
    def query(self, text: str, limit: int = 8) -> list[Hit]:
        """Top ``limit`` chunks for free text (safe to pass anything)."""
        match = fts_query(text)
        if match is None:
            return []
        return self.search(self._gate(text, match), limit)

    def _gate(self, text: str, match: str) -> str:
        """On a large index, require at least one rare term: ``(rare...) AND (full query)``.

        Ranking a term found in half the chunks costs a BM25 evaluation per
        chunk and barely moves the order (its IDF is near zero).  Chunks with
        none of the query's rare terms would rank low anyway, so they are not
        candidates; BM25 still scores the whole query on the rest.  Small
        indexes, and queries made only of common words, are left as they are.
        """
        total = self._chunk_total()
        if total < GATE_MIN_CHUNKS:
            return match
        freqs = self._doc_freqs(query_terms(text, MAX_QUERY_TERMS))
        present = [t for t, df in freqs.items() if df > 0]
        rare = [t for t in present if freqs[t] <= GATE_COMMON_SHARE * total]
        if not rare and len(present) > 1:  # only common words: gate on the rarest of them
            rare = [min(present, key=lambda t: freqs[t])]
        if not rare or len(rare) == len(present):
            return match
        return "(" + " OR ".join(quote_term(t) for t in rare) + ") AND (" + match + ")"

    def _chunk_total(self) -> int:
        if self._total is None:
            self._total = self.chunk_count()
        return self._total

    def _doc_freqs(self, terms: list[str]) -> dict[str, int]:
        """``{term: chunks containing it}``, looked up by the stem SQLite's own tokenizer
        makes of it (stem and count cached per term until the next update)."""
        db = self.db
        if not self._df_ready:
            db.executescript(f"""
                CREATE VIRTUAL TABLE IF NOT EXISTS temp.query_terms USING fts5(body, tokenize='{TOKENIZER}');
                CREATE VIRTUAL TABLE IF NOT EXISTS temp.query_terms_i USING fts5vocab(temp, query_terms, 'instance');
                CREATE VIRTUAL TABLE IF NOT EXISTS temp.chunks_v USING fts5vocab(main, chunks, 'row');""")
            self._df_ready = True
        new = [t for t in terms if t not in self._stems]
        if new:  # one round trip stems them all: token i of the row is term i
            db.execute("INSERT INTO temp.query_terms(rowid, body) VALUES(1, ?)", (" ".join(new),))
            stems = [row[0] for row in db.execute("SELECT term FROM temp.query_terms_i ORDER BY offset")]
            db.execute("DELETE FROM temp.query_terms WHERE rowid = 1")
            aligned = len(stems) == len(new)
            for n, term in enumerate(new):
                self._stems[term] = stems[n] if aligned else ""
        wanted = [self._stems[t] for t in terms if self._stems[t] and self._stems[t] not in self._df]
        for stem in dict.fromkeys(wanted):
            row = db.execute("SELECT doc FROM temp.chunks_v WHERE term = ?", (stem,)).fetchone()
            self._df[stem] = row[0] if row else 0
        return {t: self._df[self._stems[t]] for t in terms if self._stems[t]}

    def search(self, match: str, limit: int = 8) -> list[Hit]:
        """Top ``limit`` chunks for an FTS5 MATCH expression (see terms.fts_query)."""
        rows = self.db.execute(
            f"""SELECT c.path, c.start, c.end, -r.score, c.body
                FROM (SELECT rowid AS id, bm25(chunks, {PATH_WEIGHT}, {BODY_WEIGHT}) AS score
                      FROM chunks WHERE chunks MATCH ? ORDER BY score LIMIT ?) AS r
                JOIN chunks AS c ON c.rowid = r.id ORDER BY r.score""", (match, limit))
        return [Hit(*row) for row in rows]

    def files(self) -> Iterator[tuple[str, int, str]]:
        """``(path, size, status)`` for every file the index knows."""
        return iter(self.db.execute("SELECT path, size, status FROM files ORDER BY path").fetchall())

    def chunk_count(self) -> int:
        return self.db.execute("SELECT coalesce(sum(hi - lo + 1), 0) FROM files WHERE lo IS NOT NULL").fetchone()[0]


class _BatchWriter:
    """Collects index writes and sends them as ``executemany`` batches."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.chunks: list[tuple] = []
        self.files: list[tuple] = []
        self.drops: list[tuple[int, int]] = []
        self.touches: list[tuple] = []
        self.deleted_files: list[tuple[str]] = []

    def add_chunk(self, rowid: int, path: str, body: str, start: int, end: int) -> None:
        self.chunks.append((rowid, path, body, start, end))
        if len(self.chunks) >= FLUSH_ROWS:
            self.flush()

    def record(self, entry: FileEntry, digest: bytes, status: str, lo: Optional[int],
               hi: Optional[int], old: Optional[_Known]) -> None:
        if old and old.lo is not None:
            self.drops.append((old.lo, old.hi))
        self.files.append((entry.rel, entry.mtime_ns, entry.size, digest, status, lo, hi))

    def touch(self, entry: FileEntry) -> None:
        self.touches.append((entry.mtime_ns, entry.size, entry.rel))

    def drop(self, rel: str, old: _Known) -> None:
        if old.lo is not None:
            self.drops.append((old.lo, old.hi))
        self.deleted_files.append((rel,))

    def flush(self) -> None:
        db = self.db
        if self.drops:  # old chunks go before new ones could reuse nothing: ids only grow
            db.executemany("DELETE FROM chunks WHERE rowid BETWEEN ? AND ?", self.drops)
        if self.chunks:
            db.executemany("INSERT INTO chunks(rowid, path, body, start, end) VALUES(?,?,?,?,?)", self.chunks)
        if self.files:
            db.executemany("INSERT OR REPLACE INTO files VALUES(?,?,?,?,?,?,?)", self.files)
        if self.touches:
            db.executemany("UPDATE files SET mtime_ns=?, size=? WHERE path=?", self.touches)
        if self.deleted_files:
            db.executemany("DELETE FROM files WHERE path=?", self.deleted_files)
        for batch in (self.chunks, self.files, self.drops, self.touches, self.deleted_files):
            batch.clear()
