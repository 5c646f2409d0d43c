#!/usr/bin/env bash
# Start the local services that the tests and a development worker need, all on
# 127.0.0.1. Safe to run again and again: whatever already answers is left alone.
#
#   scripts/services.sh all
#   scripts/services.sh docker redis moto postgres browser   (any subset)
#
# Settings (environment):
#   REDIS_PORT        6379
#   MOTO_PORT         5055   moto_server, the SQS stand-in
#   PGPORT            5432
#   PG_CLUSTER        main   Debian cluster name started in every installed version
#   VENV              <repo>/.venv   where moto_server is installed
#   REQUIRE_POSTGRES  0      1 = fail when PostgreSQL is missing or unusable
#
# Each part prints one line saying what it did. The exit status is non-zero
# when any part failed; the other parts still run.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO_ROOT/.venv}"
REDIS_PORT="${REDIS_PORT:-6379}"
MOTO_PORT="${MOTO_PORT:-5055}"
PGPORT="${PGPORT:-5432}"
PG_CLUSTER="${PG_CLUSTER:-main}"
REQUIRE_POSTGRES="${REQUIRE_POSTGRES:-0}"
HOST=127.0.0.1
# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"
ALL_PARTS=(docker redis moto postgres browser)

# Logs go to /var/log and pid files to /run when we may write there (root),
# else to /tmp.
if [[ -w /var/log ]]; then LOG_DIR=/var/log; else LOG_DIR=/tmp; fi
if [[ -w /run ]]; then RUN_DIR=/run; else RUN_DIR=/tmp; fi

usage() { sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

# wait_for SECONDS COMMAND...: retry COMMAND every half second until it
# succeeds or the time is up.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# True when something accepts TCP connections on HOST:PORT.
tcp_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# Start a daemon detached from this shell (own session, no terminal), so that
# it outlives the script and a Ctrl-C in the caller's terminal does not reach it.
spawn() {
  local log="$1"
  shift
  nohup setsid "$@" >>"$log" 2>&1 </dev/null &
  echo $!
}

# --- docker -----------------------------------------------------------------

start_docker() {
  if docker info >/dev/null 2>&1; then
    echo "docker: already running"
    return 0
  fi
  # A Docker client can be on the machine without the engine: Debian's docker.io brings both.
  need dockerd docker.io
  need docker docker.io
  local log="$LOG_DIR/infra-ainode-dockerd.log" pid
  # A dockerd that is still starting up has written its pid file; a second one
  # would refuse to start, so wait for the first instead.
  if [[ -s /var/run/docker.pid ]] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    pid="$(cat /var/run/docker.pid)"
  else
    pid="$(spawn "$log" dockerd)"
  fi
  if ! wait_for 60 docker info; then
    echo "docker: dockerd (pid $pid) did not answer within 60 s; see $log" >&2
    tail -n 20 "$log" >&2 || true
    return 1
  fi
  echo "docker: started dockerd (pid $pid, log $log)"
}

# --- redis ------------------------------------------------------------------

redis_pong() {
  local reply
  if command -v redis-cli >/dev/null; then
    reply="$(timeout 2 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" || return 1
  else
    # No client yet: speak the inline protocol by hand.
    reply="$(timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$REDIS_PORT; printf 'PING\r\n' >&3; head -n1 <&3" 2>/dev/null)" || return 1
  fi
  [[ ${reply%$'\r'} == *PONG ]]
}

start_redis() {
  if redis_pong; then
    echo "redis: already running on $HOST:$REDIS_PORT"
    return 0
  fi
  if tcp_open "$REDIS_PORT"; then
    echo "redis: port $HOST:$REDIS_PORT is taken by something that does not answer PING" >&2
    return 1
  fi
  need redis-server redis-server
  # A cache and a result store for tests: nothing needs to survive a restart,
  # so no snapshots and no append-only file.
  redis-server --daemonize yes --bind "$HOST" --port "$REDIS_PORT" \
    --save "" --appendonly no --logfile "$LOG_DIR/infra-ainode-redis.log"
  if ! wait_for 15 redis_pong; then
    echo "redis: started but no PONG within 15 s; see $LOG_DIR/infra-ainode-redis.log" >&2
    return 1
  fi
  echo "redis: started on $HOST:$REDIS_PORT"
}

# --- moto (SQS) -------------------------------------------------------------

# moto_server answers its own API at /moto-api/ (its dashboard: a fixed page, as
# tests/support/brokers.py asks it; /moto-api/data.json dumps every queue and message and
# took 5 s once a benchmark had left thousands of them); anything else on the
# port is some other program. Without curl, an open port has to do.
moto_answers() {
  if command -v curl >/dev/null; then
    curl -fsS -o /dev/null --max-time 2 "http://$HOST:$MOTO_PORT/moto-api/"
  else
    tcp_open "$MOTO_PORT"
  fi
}

start_moto() {
  if moto_answers 2>/dev/null; then
    echo "moto: already running on $HOST:$MOTO_PORT"
    return 0
  fi
  if tcp_open "$MOTO_PORT"; then
    echo "moto: port $HOST:$MOTO_PORT is taken by something that is not moto_server" >&2
    return 1
  fi
  local bin="$VENV/bin/moto_server" log="$LOG_DIR/infra-ainode-moto.log"
  local pidfile="$RUN_DIR/infra-ainode-moto-$MOTO_PORT.pid" pid
  if [[ ! -x $bin ]]; then
    echo "moto: $bin not found; run: $VENV/bin/pip install -r $REPO_ROOT/requirements-dev.txt" >&2
    return 1
  fi
  pid="$(spawn "$log" "$bin" -H "$HOST" -p "$MOTO_PORT")"
  # The pid file lets CI stop exactly this server: kill "$(cat PIDFILE)".
  echo "$pid" >"$pidfile"
  # Importing moto takes a few seconds; give up early if the process died.
  local deadline=$((SECONDS + 30))
  until moto_answers 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
      echo "moto: moto_server (pid $pid) did not come up; see $log" >&2
      tail -n 20 "$log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
  echo "moto: started on $HOST:$MOTO_PORT (pid $pid, pid file $pidfile, log $log)"
}

# --- postgres ---------------------------------------------------------------

# PostgreSQL is optional for development (SQLite is the default), so problems
# here only fail the script when REQUIRE_POSTGRES=1.
postgres_problem() {
  echo "postgres: $*" >&2
  [[ $REQUIRE_POSTGRES != 1 ]]
}

pg_ready() { pg_isready -q -h "$HOST" -p "$PGPORT"; }

start_postgres() {
  local did="already running"
  if ! command -v pg_isready >/dev/null || ! command -v pg_ctlcluster >/dev/null \
     || [[ ! -d /etc/postgresql ]]; then
    # Required (CI): install the server, its client (psql, pg_isready) and Debian's cluster wrapper.
    if [[ $REQUIRE_POSTGRES != 1 ]] || ! apt_install postgresql; then
      postgres_problem "not installed; apt-get install postgresql to run the PostgreSQL tests"
      return
    fi
  fi
  if ! pg_ready; then
    # Debian's wrapper; --skip-systemctl-redirect because there is no systemd
    # here. The cluster is started in every installed version.
    local conf version
    for conf in /etc/postgresql/*/"$PG_CLUSTER"; do
      [[ -d $conf ]] || continue
      version="$(basename "$(dirname "$conf")")"
      pg_ctlcluster --skip-systemctl-redirect "$version" "$PG_CLUSTER" start || true
    done
    if ! wait_for 30 pg_ready; then
      postgres_problem "not answering on $HOST:$PGPORT after starting the clusters"
      return
    fi
    did="started"
  fi
  # Django's test runner connects as postgres over TCP and creates its own
  # test database, so that role must get in without a password and may create
  # databases (pg_hba.conf "host all all 127.0.0.1/32 trust").
  local can_create
  can_create="$(PGCONNECT_TIMEOUT=5 psql -w -h "$HOST" -p "$PGPORT" -U postgres -d postgres -tA \
    -c 'select rolsuper or rolcreatedb from pg_roles where rolname = current_user' 2>&1)" || {
    postgres_problem "$did on $HOST:$PGPORT, but psql -U postgres fails (pg_hba.conf needs" \
      "'host all postgres 127.0.0.1/32 trust'): $can_create"
    return
  }
  if [[ $can_create != t ]]; then
    postgres_problem "$did on $HOST:$PGPORT, but role postgres may not create databases"
    return
  fi
  echo "postgres: $did on $HOST:$PGPORT (psql -U postgres ok)"
}

# --- browser ----------------------------------------------------------------

# Debian's Chromium and its WebDriver, for the tests that drive a real browser
# (headless). Installed only when missing: apt is slow.
start_browser() {
  if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    echo "browser: chromium and chromedriver already installed"
    return 0
  fi
  apt_install chromium chromium-driver \
    || fail "installing chromium" "run: apt-get update && apt-get install -y chromium chromium-driver"
  if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
    echo "browser: chromium or chromedriver still missing after apt-get install" >&2
    return 1
  fi
  echo "browser: installed chromium and chromium-driver"
}

# --- main -------------------------------------------------------------------

main() {
  if (($# == 0)); then
    usage >&2
    return 2
  fi
  local parts=() part
  for part in "$@"; do
    case "$part" in
      all) parts+=("${ALL_PARTS[@]}") ;;
      docker|redis|moto|postgres|browser) parts+=("$part") ;;
      -h|--help) usage; return 0 ;;
      *) echo "unknown service: $part" >&2; usage >&2; return 2 ;;
    esac
  done

  local failed=() rc
  for part in "${parts[@]}"; do
    # Each part in a subshell with -e of its own: bash ignores -e inside a
    # function called from `||` or `if`, which would hide a failing step.
    set +e
    (set -e; "start_$part")
    rc=$?
    set -e
    ((rc == 0)) || failed+=("$part")
  done
  if ((${#failed[@]})); then
    echo "services: failed: ${failed[*]}" >&2
    return 1
  fi
}

main "$@"
