#!/usr/bin/env bash
# Install everything, start PostgreSQL and Redis if needed, then lint, type-check and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
bash scripts/services.sh
. .venv/bin/activate

ruff check .
mypy orchestrator gpu_worker
mypy --strict deploy/worker/healthcheck.py infra/cloud-init/render.py
if [ "$#" -gt 0 ]; then
    exec python -m pytest -q "$@"
fi
# Most tests run in parallel processes (they wait on databases and subprocesses more than they compute); the chaos,
# load, browser and end-to-end tests, which time real processes and kill them, run alone after them.
status=0
python -m pytest -q -n "${TEST_PROCESSES:-2}" -m "not serial" || status=$?
python -m pytest -q -m serial || status=$?
exit "$status"
