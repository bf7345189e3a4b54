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
python -m pytest -q "$@"
