#!/usr/bin/env bash
# Create .venv and install the project with the inference stack and the test tools. Re-running is cheap: nothing is
# reinstalled unless pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate

stamp=.venv/.installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

python -m pip install --quiet --upgrade pip
# constraints.txt pins the CPU torch and its matching torchvision; an unpinned torch would pull gigabytes of CUDA.
python -m pip install --quiet -c constraints.txt -e ".[worker,dev]"
# facenet-pytorch's metadata pins an old torch; its code works with ours, so it is installed without dependencies.
python -m pip install --quiet -c constraints.txt --no-deps "facenet-pytorch>=2.6"
echo "$want" > "$stamp"
