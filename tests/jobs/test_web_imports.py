"""The web process accepts jobs without loading the worker: no sandbox module, no `docker`, no gateway."""
import json
import subprocess
import sys

from django.conf import settings

WEB = """
import json, os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infra_ainode.settings")
from infra_ainode.wsgi import application  # noqa: F401  (django.setup, the apps' ready())
from django.urls import get_resolver
get_resolver().url_patterns  # every view module the URLs name
import jobs.api.views, jobs.services, jobs.dispatch, jobs.admin, jobs.views  # noqa: F401,E401
from celery import current_app
current_app.finalize(auto=True)  # the web's Celery app as a publish finds it
worker_side = sorted(name for name in sys.modules
                     if name == "docker" or name.startswith(("docker.", "jobs.sandbox", "jobs.runner",
                                                             "jobs.metering.gateway", "jobs.metering.transport")))
print(json.dumps(worker_side))
"""


def test_the_web_process_imports_nothing_of_the_worker_side():
    completed = subprocess.run([sys.executable, "-c", WEB], capture_output=True, text=True, timeout=120,
                               cwd=settings.BASE_DIR)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == []
