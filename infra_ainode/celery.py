"""The Celery application. Configuration comes from Django settings (CELERY_* names)."""
import os

from celery import Celery

from .filesystem_broker import install as _install_atomic_filesystem_broker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infra_ainode.settings")
_install_atomic_filesystem_broker()

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
