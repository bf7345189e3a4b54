#!/usr/bin/env bash
# Validators that PyPI does not have, cached under .venv/share/ for the deploy tests. Re-running is cheap: nothing is
# downloaded once the cache is complete.
#
# cloud-init's schema validator (tests/deploy/test_infra.py): cloud-init is not on PyPI, so Debian's package and the
# pure-Python libraries it imports that our venv lacks are downloaded with `apt-get download` and unpacked with
# `dpkg -x` -- nothing is installed, no service is touched. jinja2, PyYAML, jsonschema and requests come from the venv.
set -euo pipefail
cd "$(dirname "$0")/.."

CLOUD_INIT_DIR=.venv/share/cloud-init
CLOUD_INIT_DEBS=(cloud-init python3-configobj python3-jsonpatch python3-json-pointer python3-six)

if [ -f "$CLOUD_INIT_DIR/.complete" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
  echo "cloud-init's schema validator is not cached (needs apt-get and dpkg): tests/deploy/test_infra.py will fail" >&2
  exit 0
fi
rm -rf "$CLOUD_INIT_DIR"
mkdir -p "$CLOUD_INIT_DIR/debs" "$CLOUD_INIT_DIR/root"
download() {
  (cd "$CLOUD_INIT_DIR/debs" && apt-get download -q "${CLOUD_INIT_DEBS[@]}" >/dev/null 2>&1)
}
# A fresh container has no package lists; they are fetched only when the download needs them and we may.
if ! download; then
  if [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1 && download; then
    :
  else
    echo "apt-get download ${CLOUD_INIT_DEBS[*]} failed: tests/deploy/test_infra.py will fail" >&2
    exit 0
  fi
fi
for deb in "$CLOUD_INIT_DIR"/debs/*.deb; do
  dpkg -x "$deb" "$CLOUD_INIT_DIR/root"
done
rm -rf "$CLOUD_INIT_DIR/debs"
touch "$CLOUD_INIT_DIR/.complete"
