#!/usr/bin/env bash
# The main job, from a fresh clone: installs what is missing, starts the stack on its defaults (SQLite, the
# filesystem broker, one worker, the local AI node unless AI_NODE_URL points elsewhere), deploys the example
# function and runs it; prints its result and the tokens it was metered for. The stack keeps running
# afterwards (scripts/stack.sh stop; scripts/ai-node.sh stop).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/services.sh docker
scripts/build-runtime-image.sh
if [[ -z "${AI_NODE_URL:-}" ]]; then
    scripts/ai-node.sh start
fi
scripts/stack.sh start
exec .venv/bin/python scripts/demo.py "$@"
