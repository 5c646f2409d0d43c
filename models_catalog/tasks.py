from celery import shared_task
from django.conf import settings

from .services import sync_catalogue


@shared_task(name="models_catalog.sync_models", ignore_result=True)
def sync_models() -> None:
    """Refresh the catalogue; no retry: the next beat tick is the retry."""
    sync_catalogue(timeout_ms=settings.AI_NODE_TIMEOUT)
