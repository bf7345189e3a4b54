#!/usr/bin/env bash
# Create .venv and install the project with the inference stack and the test tools. Re-running is cheap: nothing is
# reinstalled unless pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# `gpu-worker tag` writes XMP with exiftool (a system tool, not a Python package). Installed only where it is
# missing and we are root with apt-get; anywhere else one line says so and the install goes on.
if ! command -v exiftool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
    && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libimage-exiftool-perl >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libimage-exiftool-perl >/dev/null 2>&1; }; }; then
    :
  else
    echo "exiftool is not installed (needed by 'gpu-worker tag --write xmp|sidecar'): install libimage-exiftool-perl or see https://exiftool.org" >&2
  fi
fi

# The browser tests drive Debian's Chromium (about 350 MB with its libraries, ~15 s from a Debian mirror). Installed
# here so that the test run's time does not include it; the tests install it themselves when it is still missing.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
    && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }; }; then
    :
  else
    echo "chromium is not installed (needed by tests/browser): install Debian's chromium package" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
# Linters the deploy tests need that PyPI does not carry (cloud-init's schema check); cached, cheap to re-run.
bash scripts/install-linters.sh

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
# The Compose file format's JSON schema, as shipped inside docker-compose 1.29's wheel (the last one on PyPI): the
# tests validate deploy/compose.yaml against it. Only the wheel is downloaded; its old pins are never installed.
mkdir -p .venv/share/compose-schema
python -m pip download --quiet --no-deps --dest .venv/share/compose-schema "docker-compose==1.29.2"
echo "$want" > "$stamp"
