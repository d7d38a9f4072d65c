"""What a lost broker or Redis raises on the client side (redis-py and kombu both), and a full Redis."""
from __future__ import annotations

from typing import Any, Optional


def connection_errors() -> tuple[type[BaseException], ...]:
    import redis
    from kombu.exceptions import OperationalError

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OperationalError, ConnectionError)


def is_full_redis(exc: BaseException) -> bool:
    """Redis refused a write for lack of memory (``maxmemory`` under ``noeviction``), possibly wrapped by kombu."""
    from redis.exceptions import OutOfMemoryError

    while exc is not None:
        if isinstance(exc, OutOfMemoryError):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def full_redis_message(settings: Any = None) -> str:
    """"Redis is out of memory (maxmemory N ...)": N read from the server when it answers (INFO still does)."""
    from dispatch.runtime.transport import full_redis_message as message

    return message(_maxmemory(settings))


def _maxmemory(settings: Any) -> Optional[str]:
    url = settings and (settings.state_url or settings.broker_url or settings.result_backend)
    if not url or not str(url).startswith(("redis://", "rediss://")):
        return None
    try:
        import redis

        memory = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).info("memory")
        human = memory.get("maxmemory_human") or memory.get("maxmemory")
        policy = memory.get("maxmemory_policy")
        return f"{human}, policy {policy}" if policy else str(human)
    except Exception:  # noqa: BLE001 - the message goes out without the figure
        return None
