#!/bin/sh
# nginx's start in deploy/compose.yaml: derive the request body limit, refuse to start without a certificate,
# reload every 6 hours so that renewed certificates are served, then hand over to the nginx image's entrypoint
# (which renders templates/nginx.conf.template and execs nginx).
set -eu

: "${DOMAIN:?DOMAIN is not set (deploy/.env)}"
: "${ORCH_MAX_UPLOAD_BYTES:?ORCH_MAX_UPLOAD_BYTES is not set (deploy/.env)}"

# The API refuses an over-limit file itself, with a per-file reason; nginx lets through the limit plus room for
# the multipart framing and the other files of one request, so that the API is the one to answer.
REQUEST_OVERHEAD_BYTES=67108864
CLIENT_MAX_BODY_BYTES=$((ORCH_MAX_UPLOAD_BYTES + REQUEST_OVERHEAD_BYTES))
export CLIENT_MAX_BODY_BYTES

certificate="/etc/letsencrypt/live/${DOMAIN}/fullchain.pem"
if [ ! -s "${certificate}" ]; then
    echo "no TLS certificate at ${certificate}: obtain one first (docs/deploy-vps.md, TLS)" >&2
    exit 1
fi

RELOAD_INTERVAL_S=21600
(
    while :; do
        sleep "${RELOAD_INTERVAL_S}"
        nginx -s reload
    done
) &

exec /docker-entrypoint.sh nginx -g 'daemon off;'
