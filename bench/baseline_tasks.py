"""The bare-Celery baselines the benchmarks compare dispatch against: only bench workers register them
(``celery -A bench.worker_app worker``), never a production worker."""
import time

from celery import shared_task



@shared_task(name="dispatch.baseline_noop")
def baseline_noop(i: int) -> int:
    """A no-op on the agents queue: a bare group of these is the lower bound of phase 4's overhead."""
    return i


@shared_task(bind=True, name="dispatch.baseline_hop", ignore_result=True)
def baseline_hop(self, remaining: int, sleep_ms: float, key: str) -> None:
    """Sleep, then send the next task of this chain: bare Celery's cost of a dependent hop.

    The last task of a chain pushes to ``key`` in the result backend's Redis, which the
    benchmark waits on.  No chord, no result: the least Celery can do per hop.
    """
    time.sleep(sleep_ms / 1000)
    if remaining > 1:
        self.apply_async((remaining - 1, sleep_ms, key), queue=self.request.delivery_info.get("routing_key"))
    else:
        self.backend.client.rpush(key, time.time())
