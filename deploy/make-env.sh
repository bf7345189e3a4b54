#!/usr/bin/env bash
# Writes deploy/.env (or the file given as the first argument) from deploy/env.example, replacing every "change-me"
# with a fresh random secret. Never overwrites an existing file. The Vast.ai key cannot be generated: it is left
# empty (no rented GPUs) until you paste yours.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
template="${here}/env.example"
target="${1:-${here}/.env}"

if [[ -e "${target}" ]]; then
  echo "${target} exists; leaving it as it is (remove it first to generate new secrets)" >&2
  exit 1
fi

# 32 random bytes as hex: URL-safe, so the passwords go into connection URLs unescaped.
random_secret() {
  if command -v openssl >/dev/null 2>&1; then
    openssl rand -hex 32
  else
    python3 -c 'import secrets; print(secrets.token_hex(32))'
  fi
}

umask 077
staging="$(mktemp "${target}.XXXXXX")"
trap 'rm -f "${staging}"' EXIT

while IFS= read -r line || [[ -n "${line}" ]]; do
  case "${line}" in
    ORCH_VAST_API_KEY=change-me) printf '%s\n' "ORCH_VAST_API_KEY=" ;;
    *=change-me) printf '%s=%s\n' "${line%%=*}" "$(random_secret)" ;;
    *) printf '%s\n' "${line}" ;;
  esac
done <"${template}" >"${staging}"

# A hard link fails when the target appeared meanwhile, so an existing file is never replaced.
if ! ln "${staging}" "${target}"; then
  echo "${target} appeared meanwhile; leaving it as it is" >&2
  exit 1
fi

echo "wrote ${target} with new secrets; now set DOMAIN and LETSENCRYPT_EMAIL in it (and ORCH_VAST_API_KEY to rent GPUs)"
