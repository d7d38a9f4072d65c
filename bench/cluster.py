"""A private Redis and real worker processes for a benchmark run (torn down at exit)."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from dispatch.config import Settings
from dispatch.testing import RedisServer, WorkerPool

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Cluster:
    """What a benchmark may look at: the settings, the env a CLI process needs, the workers, the Redis."""

    settings: Settings
    env: dict[str, str]
    pool: WorkerPool
    redis: RedisServer
    tmp: Path


@contextmanager
def cluster(workers: int, concurrency: int, pool: str = "threads",
            extra_env: Optional[dict[str, str]] = None) -> Iterator[Settings]:
    with cluster_parts(workers, concurrency, pool, extra_env) as parts:
        yield parts.settings


@contextmanager
def cluster_parts(workers: int, concurrency: int, pool: str = "threads",
                  extra_env: Optional[dict[str, str]] = None, appendonly: bool = False) -> Iterator[Cluster]:
    """``appendonly``: Redis with AOF on, as a deployment that must survive a restart runs it (the soak)."""
    tmp = Path(tempfile.mkdtemp(prefix="dispatch-bench-"))
    redis = RedisServer(tmp, appendonly=appendonly)
    redis.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env.update(DISPATCH_BROKER_URL=redis.url, DISPATCH_STATE_DIR=str(tmp / "state"),
               DISPATCH_KEY_PREFIX="bench", DISPATCH_WORKER_LOG_LEVEL="WARNING", **(extra_env or {}))
    pool_ = WorkerPool(env, tmp, cwd=ROOT)
    try:
        for i in range(workers):
            pool_.start(f"bench{i}", pool=pool, concurrency=concurrency, app="bench.worker_app")
        yield Cluster(Settings.from_env(env), env, pool_, redis, tmp)
    finally:
        pool_.stop_all()
        redis.stop()
