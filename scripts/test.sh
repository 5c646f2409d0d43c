#!/usr/bin/env bash
# The test command: installs what is missing, starts what the tests need (Docker engine, Redis, moto_server for
# SQS, Chromium for the browser tests, the local AI node, the job runtime image and the application image), then
# runs the whole suite. Extra arguments go to pytest.
# `scripts/test.sh --fast` (or `-m "not slow"`) is the fast loop: no Docker, worker, SQS, model or browser, so it
# starts only Redis (and PostgreSQL when DATABASE_URL names it), and runs on two processes (pytest-xdist).
# SQLite by default; DATABASE_URL=postgres://postgres@127.0.0.1:5432/infra_ainode runs it on PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
args=() fast=0
for arg in "$@"; do
    case $arg in
        --fast) fast=1; args+=(-m "not slow" -n 2) ;;
        "not slow") fast=1; args+=("$arg" -n 2) ;;
        *) args+=("$arg") ;;
    esac
done
scripts/bootstrap.sh
parts=(redis)
((fast)) || parts+=(docker moto browser)
if [[ "${DATABASE_URL:-}" == postgres* ]]; then parts+=(postgres); fi
scripts/services.sh "${parts[@]}"
if ((!fast)); then
    scripts/build-runtime-image.sh
    scripts/build-app-image.sh
    scripts/ai-node.sh start
fi
exec .venv/bin/python -m pytest "${args[@]}"
