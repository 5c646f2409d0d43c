"""The Celery application. Configuration comes from Django settings (CELERY_* names).

Besides the tasks, a worker may serve its metrics (WORKER_METRICS_PORT) and keep a liveness file fresh
(WORKER_HEARTBEAT_FILE) for an orchestrator's probe.
"""
import gc
import os
from pathlib import Path
from typing import Any

from celery import Celery, bootsteps
from celery.signals import worker_init, worker_process_shutdown
from kombu.transport import TRANSPORT_ALIASES

from .filesystem_broker import install as _install_atomic_filesystem_broker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infra_ainode.settings")
_install_atomic_filesystem_broker()
# sqs:// URLs: kombu's SQS transport with a cheaper SendMessage (infra_ainode/sqs_broker.py). Named, not imported, so
# that a process on another broker never loads boto3.
TRANSPORT_ALIASES["sqs"] = "infra_ainode.sqs_broker:Transport"

app = Celery("infra_ainode")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _prepare_broker(sender: Celery, **kwargs: object) -> None:
    """kombu's filesystem transport needs its folders to exist before the first message."""
    from django.conf import settings

    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        if key in options:
            os.makedirs(options[key], exist_ok=True)


class LivenessFile(bootsteps.StartStopStep):
    """Touches WORKER_HEARTBEAT_FILE every WORKER_HEARTBEAT_SECONDS while the worker is consuming, so that the file
    goes stale when the worker dies, hangs, or lives on without taking messages; removed at a clean shutdown.

    Consuming means: the consumer runs (it is not reconnecting to a broker that went away) and, where the transport
    can tell (ours for SQS and the filesystem, `consuming()` on the channel), its loop over the job queues has
    moved on lately. An SQS outage alone keeps the file fresh, since failed polls are tried again; a poll loop that
    stopped for good does not, and the orchestrator restarts the worker (docs/operating.md)."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_entry = None

    def start(self, worker: Any) -> None:
        from django.conf import settings

        path = Path(settings.WORKER_HEARTBEAT_FILE) if settings.WORKER_HEARTBEAT_FILE else None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

        def beat() -> None:
            if consuming(worker):
                path.touch()

        self.timer_entry = worker.timer.call_repeatedly(settings.WORKER_HEARTBEAT_SECONDS, beat, priority=10)

    def stop(self, worker: Any) -> None:
        from django.conf import settings

        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None
            Path(settings.WORKER_HEARTBEAT_FILE).unlink(missing_ok=True)


def consuming(worker: Any) -> bool:
    """Whether `worker`'s consumer is running and, where its transport can tell, still taking messages."""
    consumer = getattr(worker, "consumer", None)
    if consumer is None or consumer.blueprint.state != bootsteps.RUN:
        return False
    channel = getattr(consumer.task_consumer, "channel", None)
    check = getattr(channel, "consuming", None)
    return check() if check is not None else True


app.steps["worker"].add(LivenessFile)


class OutboxRelay(bootsteps.StartStopStep):
    """On PostgreSQL, the worker's main process runs a relay that sends admitted jobs to the broker
    (jobs/outbox.py), whatever JOB_DISPATCH the worker itself has: the web processes' setting decides whether
    there are any (a direct-mode job is marked sent as it is admitted). Started after the pool, so that the pool's
    processes are not forked with its thread."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.relay = None

    def start(self, worker: Any) -> None:
        from django.db import connection

        if connection.vendor == "postgresql":
            from jobs.outbox import Relay

            # Fair share sends each queue's jobs against the seats of the workers that consume it.
            queues = list(worker.app.amqp.queues.consume_from or [worker.app.conf.task_default_queue])
            self.relay = Relay(worker=f"{worker.hostname}/{os.getpid()}",
                               seats={queue: worker.concurrency for queue in queues}).start()

    def stop(self, worker: Any) -> None:
        if self.relay is not None:
            self.relay.stop()
            self.relay = None


app.steps["worker"].add(OutboxRelay)


@worker_init.connect
def _serve_worker_metrics(**kwargs: Any) -> None:
    from django.conf import settings

    from core import metrics

    if settings.WORKER_METRICS_PORT:
        metrics.start_worker_exporter(port=settings.WORKER_METRICS_PORT, address=settings.WORKER_METRICS_ADDRESS,
                                      token=settings.METRICS_TOKEN)


@worker_init.connect
def _freeze_start_up_objects(**kwargs: Any) -> None:
    """Celery has imported the task modules, and with them the job's code, before this signal and before the pool
    forks its processes: take what start-up made out of the garbage collector's sight (gc.freeze), in this process
    and so in every child it forks, so that a full collection walks only what jobs make. Without it a full
    collection took about 90 ms in each pool process during a burst, stalling the job (and its gateway) it fell on."""
    gc.freeze()


@worker_process_shutdown.connect
def _forget_pool_process(pid: int, **kwargs: Any) -> None:
    from core import metrics

    metrics.process_exited(pid)
