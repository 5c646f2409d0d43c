#!/usr/bin/env bash
# Creates .venv and installs the pinned requirements and the `ainode` command-line client (pyproject.toml, as an
# editable install), skipping the install when nothing changed since last time.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
wanted=$( (cat requirements.txt requirements-dev.txt pyproject.toml; pwd) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
    .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
    echo "$wanted" > "$stamp"
    echo "bootstrap: requirements installed"
else
    echo "bootstrap: requirements up to date"
fi
mkdir -p var/log var/run
