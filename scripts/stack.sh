#!/usr/bin/env bash
# Start, stop or ask after the development stack: the web API (127.0.0.1:8000) and one Celery worker, on the
# defaults (SQLite, kombu's filesystem broker) unless the environment says otherwise.
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
mkdir -p var/run var/log

# A job waiting on its model uses no CPU, so the number of jobs at once is bounded by memory, not by CPUs: one
# process per 1 GB available (room for a job at the default 256 MB and its worker process), from 2 to 8.
default_concurrency() {
    local mb; mb=$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo 2>/dev/null || echo 2048)
    local n=$((mb / 1024)); ((n < 2)) && n=2; ((n > 8)) && n=8
    echo "$n"
}

running() { [[ -f "var/run/$1.pid" ]] && kill -0 "$(cat "var/run/$1.pid")" 2>/dev/null; }

start_one() {  # name, command...
    local name=$1; shift
    if running "$name"; then echo "$name: already running (pid $(cat "var/run/$name.pid"))"; return; fi
    setsid nohup "$@" >>"var/log/$name.log" 2>&1 </dev/null &
    echo $! >"var/run/$name.pid"
    echo "$name: started (pid $!, log var/log/$name.log)"
}

stop_one() {
    local name=$1
    if running "$name"; then
        local pid; pid=$(cat "var/run/$name.pid")
        kill "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
        echo "$name: stopped"
    else
        echo "$name: not running"
    fi
    rm -f "var/run/$name.pid"
}

case "${1:-}" in
start)
    $PY manage.py migrate --noinput -v0
    # Each worker process keeps WARM_POOL_SIZE containers started ahead of its jobs (off: 0).
    WARM_POOL_SIZE=${WARM_POOL_SIZE:-2} start_one worker .venv/bin/celery -A infra_ainode worker \
        -Q "${JOB_QUEUE:-jobs}" -c "${WORKER_CONCURRENCY:-$(default_concurrency)}" \
        -l info --without-gossip --without-mingle -B
    start_one web $PY manage.py runserver "127.0.0.1:$WEB_PORT" --noreload
    for _ in $(seq 1 60); do
        curl -s -o /dev/null "http://127.0.0.1:$WEB_PORT/api/v1/" && break
        sleep 0.5
    done
    ;;
stop) stop_one web; stop_one worker ;;
status)
    for name in web worker; do
        if running "$name"; then echo "$name: running (pid $(cat "var/run/$name.pid"))"; else echo "$name: stopped"; fi
    done
    ;;
*) sed -n '2,5s/^# \{0,1\}//p' "$0"; exit 2 ;;
esac
