from celery import shared_task
from django.conf import settings

from .services import list_models


@shared_task(name="models_catalog.sync_models", ignore_result=True)
def sync_models() -> None:
    """Refresh the catalogue; no retry: the next beat tick is the retry."""
    list_models(timeout_ms=settings.AI_NODE_TIMEOUT)
