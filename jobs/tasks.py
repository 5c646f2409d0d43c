from celery import shared_task
from celery.signals import worker_process_init, worker_process_shutdown, worker_ready, worker_shutdown

from .events import prune_events
from .idempotency import purge_expired_keys
from .metering.checkpoints import seal_due_days
from .metering.reconcile import reconcile_estimated_calls
from .outbox import resend_unclaimed
from .runner import run_job
from .sandbox.engine import new_backend, reap_orphan_containers, shared_backend, start_warm_pool, stop_warm_pool
from .sandbox.layers import build_layer, cleanup as cleanup_layers, prune_host_cache
from .sandbox.recovery import recover_lost_jobs


@shared_task(name="jobs.run_job", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job_task(job_id: str) -> None:
    run_job(job_id)


@shared_task(name="jobs.build_layer", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def build_layer_task(layer_id: int) -> None:
    build_layer(layer_id, backend=shared_backend())


@shared_task(name="jobs.sweep_layers", ignore_result=True)
def sweep_layers_task() -> None:
    cleanup_layers(new_backend())


@shared_task(name="jobs.recover_lost_jobs", ignore_result=True)
def recover_lost_jobs_task() -> None:
    """Lost jobs (their worker died while running them), and lost messages (a job sent that no worker took)."""
    recover_lost_jobs()
    resend_unclaimed()


@shared_task(name="jobs.reconcile_estimated_calls", ignore_result=True)
def reconcile_estimated_calls_task() -> None:
    reconcile_estimated_calls()


@shared_task(name="jobs.seal_receipt_days", ignore_result=True)
def seal_receipt_days_task() -> None:
    seal_due_days()


@shared_task(name="jobs.purge_idempotency_keys", ignore_result=True)
def purge_idempotency_keys_task() -> None:
    purge_expired_keys()


@worker_ready.connect
def _recover_on_start(sender: object = None, **kwargs: object) -> None:
    reap_orphan_containers()
    recover_lost_jobs()
    prune_host_cache(new_backend())
    # Tasks run in this process unless the pool forks children, which warm their own (worker_process_init).
    if "prefork" not in type(getattr(sender, "pool", None)).__module__:
        start_warm_pool()


@worker_process_init.connect
def _warm_child(**kwargs: object) -> None:
    start_warm_pool()


@worker_shutdown.connect
@worker_process_shutdown.connect
def _drain_pool(**kwargs: object) -> None:
    stop_warm_pool()


@shared_task(name="jobs.prune_job_events", ignore_result=True)
def prune_job_events_task() -> None:
    prune_events()
