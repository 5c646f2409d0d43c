#!/usr/bin/env bash
# Start, stop or ask after the development AI node (python -m devnode): llama.cpp serving smollm2:135m with
# the OpenAI API on AI_NODE_PORT and the Ollama API on AI_NODE_OLLAMA_PORT, both on 127.0.0.1.
#
#   scripts/ai-node.sh start|stop|status
#
# Every verb is idempotent: start leaves a node that already answers alone, stop is fine when none runs.
# Settings (environment): AI_NODE_PORT (8090), AI_NODE_OLLAMA_PORT (11435), AI_NODE_THREADS (1),
# AI_NODE_CTX (2048), AI_NODE_PARALLEL (2).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
PID_FILE="$ROOT/var/run/ai_node.pid"
LOG_FILE="$ROOT/var/log/ai_node.log"
XLLAMACPP="xllamacpp==2026.10.11549"
READY_TIMEOUT=120

PORTS=(--port "${AI_NODE_PORT:-8090}" --ollama-port "${AI_NODE_OLLAMA_PORT:-11435}")
# `python -m devnode` finds the package in the current folder.
cd "$ROOT"

answers() { "$PY" -m devnode "${PORTS[@]}" --check; }

if [[ ! -x $PY ]]; then
    echo "ai-node.sh: finding $PY failed: run scripts/bootstrap.sh first" >&2
    exit 1
fi

# The pid in the pid file, only if that process is still our `python -m devnode` (pids get reused).
node_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "-m devnode" && echo "$pid"
}

start() {
    if answers; then
        echo "ai-node already running (openai port ${AI_NODE_PORT:-8090}, ollama port ${AI_NODE_OLLAMA_PORT:-11435})"
        return 0
    fi
    if ! "$PY" -c "import xllamacpp" 2>/dev/null; then
        echo "installing $XLLAMACPP into the venv"
        "$PY" -m pip install --quiet "$XLLAMACPP" || {
            echo "ai-node.sh: installing $XLLAMACPP failed: see pip's error above; run scripts/bootstrap.sh" >&2
            return 1
        }
    fi
    mkdir -p "$ROOT/var/log" "$ROOT/var/run"
    setsid nohup "$PY" -m devnode "${PORTS[@]}" --threads "${AI_NODE_THREADS:-1}" \
        --ctx "${AI_NODE_CTX:-2048}" --parallel "${AI_NODE_PARALLEL:-2}" >>"$LOG_FILE" 2>&1 </dev/null &
    local child=$!
    for ((i = 0; i < READY_TIMEOUT * 2; i++)); do
        # Checked before asking the ports: a node that died at start-up (its port taken, say) must not be reported
        # ready because another server answers there.
        if ! kill -0 "$child" 2>/dev/null; then
            echo "ai-node exited during start-up; see $LOG_FILE" >&2
            tail -n 20 "$LOG_FILE" >&2
            return 1
        fi
        if answers; then
            echo "ai-node ready (pid $child, log $LOG_FILE)"
            return 0
        fi
        sleep 0.5
    done
    echo "ai-node not ready after ${READY_TIMEOUT}s; see $LOG_FILE" >&2
    return 1
}

stop() {
    local pid
    if ! pid="$(node_pid)"; then
        echo "ai-node not running (no live pid in $PID_FILE)"
        rm -f "$PID_FILE"
        return 0
    fi
    kill -TERM "$pid"
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || { echo "ai-node stopped (pid $pid)"; return 0; }
        sleep 0.5
    done
    echo "ai-node (pid $pid) ignored SIGTERM for 20 s; killing it" >&2
    kill -KILL "$pid"
    rm -f "$PID_FILE"
}

status() {
    if answers; then
        echo "ai-node running (pid $(node_pid || echo unknown), openai port ${AI_NODE_PORT:-8090}, ollama port ${AI_NODE_OLLAMA_PORT:-11435})"
    else
        echo "ai-node not running"
        return 3
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
