from django.apps import AppConfig
from django.db.models.signals import post_save


def _count_new_job(sender, instance, created: bool, raw: bool = False, **kwargs) -> None:
    if created and not raw:
        from .services import add_job_to_rollups

        add_job_to_rollups(instance)


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing and usage"

    def ready(self) -> None:
        # Jobs are counted in the daily roll-ups as they are created, however they are created (jobs.services,
        # the admin's re-run, tests). This is billing's only hook into jobs besides jobs.metering.ledger.record_call.
        post_save.connect(_count_new_job, sender="jobs.Job", dispatch_uid="billing.count_new_job")
