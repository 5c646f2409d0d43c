"""Gunicorn's configuration, for the application image and scripts/stack.sh alike.

    gunicorn --config infra_ainode/gunicorn.conf.py infra_ainode.wsgi

Settings from the environment: WEB_BIND (default 127.0.0.1:8000), WEB_WORKERS (default 2 × CPUs + 1),
WEB_THREADS (default 2: gunicorn's gthread workers), WEB_TIMEOUT (seconds, default 60: longer than
RUN_SYNC_TIMEOUT, which a synchronous /run may wait).

Threads, because a live event stream (GET /api/v1/jobs/{id}/events) holds its connection for as long as its job
runs: under gthread it holds one thread, and the feed never takes more than half of a worker's threads
(jobs/events/feed.py), so the API and the probes always have threads left. gthread's WEB_TIMEOUT watches the
worker's heartbeat, not a request's length, so a stream is not cut when it passes it.

Metrics of every worker process are summed through PROMETHEUS_MULTIPROC_DIR when it is set.
"""
import multiprocessing
import os

bind = os.environ.get("WEB_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_WORKERS") or multiprocessing.cpu_count() * 2 + 1)
threads = int(os.environ.get("WEB_THREADS") or 2)
timeout = int(os.environ.get("WEB_TIMEOUT") or 60)
graceful_timeout = 30
# A load balancer keeps connections open between requests; close ours a little after it would.
keepalive = 5
accesslog = "-"
errorlog = "-"
# One line per request: client, request line, status, bytes, duration in microseconds.
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(D)sus'
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn's control socket, in this stack's own VAR_DIR: its default (~/.gunicorn/gunicorn.ctl) is shared by every
# gunicorn of the user, so a second stack would take it over and delete it when it stops.
_var_dir = os.environ.get("VAR_DIR") or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "var")
os.makedirs(_var_dir, exist_ok=True)
control_socket = os.path.join(_var_dir, "gunicorn.ctl")


def post_worker_init(worker) -> None:  # noqa: ANN001 - gunicorn's hook signature
    """Import every view now rather than at the first request, then take what start-up made out of the garbage
    collector's sight (gc.freeze): a full collection no longer walks the loaded code's objects (about 110,000).
    Under the admission bench's load on SQS, the collector's CPU went from 0.31 to 0.13 ms per admission and its
    longest pause from 97 to 18 ms."""
    import gc

    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - loading the URLconf imports the views it names
    gc.freeze()


def child_exit(server, worker) -> None:  # noqa: ANN001 - gunicorn's hook signature
    """A dead worker's live gauges must stop counting; its counters stay in the sum."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


# LOG_FORMAT=json: gunicorn's own lines (start-up, workers, the access log) as JSON lines too, like the app's.
if os.environ.get("LOG_FORMAT") == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "core.logs.JsonFormatter"}},
        "handlers": {
            "error_console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
            "console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
        "root": {"level": "INFO", "handlers": []},
    }
