"""The bare-Celery baseline the benchmarks compare dispatch against (bench/)."""
from celery import shared_task


@shared_task(name="dispatch.baseline_noop")
def baseline_noop(i: int) -> int:
    """A no-op on the agents queue: a bare group of these is the lower bound of phase 4's overhead."""
    return i
