"""What a lost broker or Redis raises on the client side (redis-py and kombu both)."""
from __future__ import annotations


def connection_errors() -> tuple[type[BaseException], ...]:
    import redis
    from kombu.exceptions import OperationalError

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OperationalError, ConnectionError)
