#!/usr/bin/env bash
# Start, stop or ask after the development stack: the web API (127.0.0.1:8000, gunicorn as in the application
# image; WEB_SERVER=runserver for Django's own) and one Celery worker, on the defaults (SQLite, kombu's filesystem
# broker) unless the environment says otherwise.
#
#   scripts/stack.sh start|stop|status
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
need curl curl
PY=.venv/bin/python
WEB_PORT=${WEB_PORT:-8000}
# Pid files and logs live under VAR_DIR (as the settings' broker folder, static files and job folders do), so a
# stack started with a VAR_DIR of its own is started, stopped and asked after apart from any other.
VAR=${VAR_DIR:-var}
mkdir -p "$VAR/run" "$VAR/log"

# A job waiting on its model uses no CPU, so the number of jobs at once is bounded by memory, not by CPUs: one
# process per 1 GB available (room for a job at the default 256 MB and its worker process), from 2 to 8.
default_concurrency() {
    local mb; mb=$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo 2>/dev/null || echo 2048)
    local n=$((mb / 1024)); ((n < 2)) && n=2; ((n > 8)) && n=8
    echo "$n"
}

running() { [[ -f "$VAR/run/$1.pid" ]] && kill -0 "$(cat "$VAR/run/$1.pid")" 2>/dev/null; }

start_one() {  # name, command...
    local name=$1; shift
    if running "$name"; then echo "$name: already running (pid $(cat "$VAR/run/$name.pid"))"; return; fi
    setsid nohup "$@" >>"$VAR/log/$name.log" 2>&1 </dev/null &
    echo $! >"$VAR/run/$name.pid"
    echo "$name: started (pid $!, log $VAR/log/$name.log)"
}

stop_one() {
    local name=$1
    if running "$name"; then
        local pid; pid=$(cat "$VAR/run/$name.pid")
        kill "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
        echo "$name: stopped"
    else
        echo "$name: not running"
    fi
    rm -f "$VAR/run/$name.pid"
}

case "${1:-}" in
start)
    [[ -x $PY ]] || fail "finding $PY" "run scripts/bootstrap.sh first"
    if ! running web && curl -s -o /dev/null "http://127.0.0.1:$WEB_PORT/"; then
        fail "starting the web server" "127.0.0.1:$WEB_PORT is taken by another server; set WEB_PORT to a free port"
    fi
    $PY manage.py migrate --noinput -v0 || fail "migrating the database" "see the error above; check DATABASE_URL"
    # The admin's and the dashboard's CSS, served by WhiteNoise from STATIC_ROOT (VAR_DIR/static).
    $PY manage.py collectstatic --noinput -v0 || fail "collecting static files" "see the error above"
    # Each worker process keeps WARM_POOL_SIZE containers started ahead of its jobs (off: 0). The one worker also
    # delivers webhooks and runs beat (schedules included); production gives each its own process.
    WARM_POOL_SIZE=${WARM_POOL_SIZE:-2} start_one worker .venv/bin/celery -A infra_ainode worker \
        -Q "${JOB_QUEUE:-jobs},${OUTBOUND_QUEUE:-outbound}" -c "${WORKER_CONCURRENCY:-$(default_concurrency)}" \
        -l info --without-gossip --without-mingle -B
    if [[ ${WEB_SERVER:-gunicorn} == runserver ]]; then
        start_one web $PY manage.py runserver "127.0.0.1:$WEB_PORT" --noreload
    else
        # The web workers add up their metrics in this folder; values of an earlier run must not count.
        rm -rf "$VAR/prometheus-web" && mkdir -p "$VAR/prometheus-web"
        start_one web env PROMETHEUS_MULTIPROC_DIR="$VAR/prometheus-web" WEB_BIND="127.0.0.1:$WEB_PORT" \
            WEB_WORKERS="${WEB_WORKERS:-2}" .venv/bin/gunicorn --config infra_ainode/gunicorn.conf.py infra_ainode.wsgi
    fi
    for _ in $(seq 1 60); do
        curl -s -o /dev/null "http://127.0.0.1:$WEB_PORT/healthz" && break
        running web || fail "starting the web server" "it exited at start-up; see $VAR/log/web.log"
        sleep 0.5
    done
    curl -s -o /dev/null "http://127.0.0.1:$WEB_PORT/api/v1/" \
        || fail "starting the web server" "nothing answers on 127.0.0.1:$WEB_PORT after 30 s; see $VAR/log/web.log"
    ;;
stop) stop_one web; stop_one worker ;;
status)
    for name in web worker; do
        if running "$name"; then echo "$name: running (pid $(cat "$VAR/run/$name.pid"))"; else echo "$name: stopped"; fi
    done
    ;;
*) sed -n '2,6s/^# \{0,1\}//p' "$0"; exit 2 ;;
esac
