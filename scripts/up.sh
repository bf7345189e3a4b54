#!/usr/bin/env bash
# Install everything and run the whole system on the embedded default (SQLite, embedded queue, in-process worker).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
. .venv/bin/activate
exec orchestrator up "$@"
