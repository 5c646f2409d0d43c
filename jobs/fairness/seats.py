"""How many jobs each queue's workers run at once: every worker's relay declares its seats (its pool's size, for
each queue it consumes) when it starts and again every REFRESH_SECONDS, and forgets them when it stops. Seats not
declared again within LIVE_SECONDS are a dead worker's, and no longer counted."""
from datetime import timedelta

from django.db.models import Sum
from django.utils import timezone

from ..models import WorkerSeats

REFRESH_SECONDS = 10.0
LIVE_SECONDS = 30.0


def declare(worker: str, seats: dict[str, int]) -> None:
    """`worker` runs `seats[queue]` jobs at once from each queue it consumes; it is alive now."""
    now = timezone.now()
    for queue, count in seats.items():
        WorkerSeats.objects.update_or_create(worker=worker, queue=queue, defaults={"seats": count, "seen_at": now})


def forget(worker: str) -> None:
    WorkerSeats.objects.filter(worker=worker).delete()


def capacity(queue: str) -> int:
    """The seats of the live workers of `queue`."""
    live = WorkerSeats.objects.filter(queue=queue, seen_at__gte=timezone.now() - timedelta(seconds=LIVE_SECONDS))
    return live.aggregate(seats=Sum("seats"))["seats"] or 0
