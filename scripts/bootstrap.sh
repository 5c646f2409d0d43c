#!/usr/bin/env bash
# Creates .venv and installs the pinned requirements and the `ainode` command-line client (pyproject.toml, as an
# editable install), skipping the install when nothing changed since last time.
# PYTHON (python3) is the interpreter the venv is made from: 3.10 or newer. Debian's own python3 makes a venv only
# with python3-venv installed; this script installs it when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

PYTHON=${PYTHON:-python3}
if [[ $PYTHON == python3 ]]; then
    need python3 python3
fi
command -v "$PYTHON" >/dev/null 2>&1 || fail "finding $PYTHON" "install it, or set PYTHON to a Python 3.10 or newer"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || fail "checking $PYTHON" "it is $("$PYTHON" -V 2>&1), and 3.10 or newer is needed: set PYTHON to one"

# Debian's python3.X-venv (ensurepip and its wheels) is what `python3 -m venv` lacks on a fresh machine. Only an
# interpreter of Debian's own (under /usr) can get it from apt.
venv_package() {
    "$PYTHON" -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2] if sys.prefix == "/usr" else "")'
}

make_venv() {
    local log=var/log/venv.log
    mkdir -p var/log
    "$PYTHON" -m venv .venv >"$log" 2>&1 && rm -f "$log" && return 0
    rm -rf .venv
    local package
    package="$(venv_package)"
    if [[ -n $package ]] && apt_install "$package"; then
        "$PYTHON" -m venv .venv >"$log" 2>&1 && rm -f "$log" && return 0
        rm -rf .venv
    fi
    fail "creating .venv with $PYTHON -m venv" \
        "see $log; on Debian run: apt-get install -y ${package:-python3-venv}, or set PYTHON to another Python"
}

# A venv without pip was left half-made by an earlier failed run: make it again. (.venv may be a symlink to a
# venv shared by several checkouts; that one is never removed.)
if [[ -x .venv/bin/python && ! -x .venv/bin/pip && ! -L .venv ]]; then
    rm -rf .venv
fi
if [[ ! -x .venv/bin/python ]]; then
    [[ -L .venv || ! -e .venv ]] || rm -rf .venv
    [[ ! -L .venv ]] || fail "creating .venv" ".venv is a symlink to a missing venv; remove it or fix its target"
    make_venv
fi
stamp=.venv/.requirements.sha256
wanted=$( (cat requirements.txt requirements-dev.txt pyproject.toml; pwd) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt \
        || fail "installing the Python requirements (pip install -r requirements-dev.txt)" \
            "see pip's error above; check that PyPI is reachable, then run scripts/bootstrap.sh again"
    .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e . \
        || fail "installing the ainode client (pip install -e .)" "see pip's error above"
    echo "$wanted" > "$stamp"
    echo "bootstrap: requirements installed"
else
    echo "bootstrap: requirements up to date"
fi
mkdir -p var/log var/run
