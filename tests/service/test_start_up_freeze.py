"""Web and worker processes take what their start-up made out of the garbage collector's sight (gc.freeze) before
they serve: a full collection then walks only what requests and jobs make, instead of pausing one of them for the
whole loaded code (about 90 ms on this machine)."""
from __future__ import annotations

import json
import os
import subprocess

from tests.support import REPO_ROOT, VENV_BIN
from tests.support.workers import database_url


def state_after(code: str) -> dict:
    """Run `code` in a new Django process and report what it loaded and froze."""
    script = ("import gc, json, sys, django\n"
              "django.setup()\n"
              "before = 'jobs.api.views' in sys.modules\n"
              f"{code}\n"
              "print(json.dumps({'views_before': before, 'views_after': 'jobs.api.views' in sys.modules,\n"
              "                  'frozen': gc.get_freeze_count(), 'tracked': len(gc.get_objects())}))\n")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "infra_ainode.settings", "DATABASE_URL": database_url(),
           "WORKER_METRICS_PORT": "0"}
    result = subprocess.run([str(VENV_BIN / "python"), "-c", script], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=60, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def test_a_web_worker_imports_its_views_and_freezes_them_before_its_first_request():
    state = state_after("import runpy\n"
                        "runpy.run_path('infra_ainode/gunicorn.conf.py')['post_worker_init'](None)")
    assert not state["views_before"] and state["views_after"]
    assert state["frozen"] > state["tracked"]


def test_a_celery_worker_freezes_its_loaded_code_before_its_pool_forks():
    # What Celery does at start-up: import the task modules, then send worker_init (before the pool starts).
    state = state_after("from infra_ainode.celery import app\n"
                        "from celery.signals import worker_init\n"
                        "app.loader.import_default_modules()\n"
                        "worker_init.send(sender=None)")
    assert state["frozen"] > state["tracked"]
