#!/bin/sh
# The application image's entry point: one image, the command chooses the process.
#
#   web                  gunicorn on $WEB_BIND (default 0.0.0.0:8000), $WEB_WORKERS processes
#   worker               a Celery worker on $JOB_QUEUE, $WORKER_CONCURRENCY jobs at once
#   outbound             a Celery worker on $OUTBOUND_QUEUE (webhooks, the usage export, schedules' ticks),
#                        $OUTBOUND_CONCURRENCY deliveries at once; needs no Docker engine
#   beat                 Celery beat (catalogue sync, lost-job recovery): run exactly one
#   migrate              apply database migrations, then exit
#   manage ARGS...       manage.py ARGS (create_api_key, createsuperuser, check --deploy, ...)
#   anything else        run as given
set -eu
cd /app

# Metric files of processes from an earlier start would be summed with ours; the folder is ours alone.
clear_metrics() {
    if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
        mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
        find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -name '*.db' -delete
    fi
}

command=${1:-web}
[ $# -gt 0 ] && shift
case "$command" in
web)
    clear_metrics
    exec gunicorn --config /app/infra_ainode/gunicorn.conf.py infra_ainode.wsgi "$@"
    ;;
worker)
    clear_metrics
    exec celery -A infra_ainode worker -Q "${JOB_QUEUE:-jobs}" -c "${WORKER_CONCURRENCY:-2}" \
        -l "${LOG_LEVEL:-INFO}" --without-gossip --without-mingle "$@"
    ;;
outbound)
    clear_metrics
    exec celery -A infra_ainode worker -Q "${OUTBOUND_QUEUE:-outbound}" -c "${OUTBOUND_CONCURRENCY:-4}" \
        -l "${LOG_LEVEL:-INFO}" --without-gossip --without-mingle "$@"
    ;;
beat)
    exec celery -A infra_ainode beat -l "${LOG_LEVEL:-INFO}" "$@"
    ;;
migrate)
    exec python manage.py migrate --noinput "$@"
    ;;
manage)
    exec python manage.py "$@"
    ;;
*)
    exec "$command" "$@"
    ;;
esac
