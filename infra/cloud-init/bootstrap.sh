#!/usr/bin/env bash
# Take an Ubuntu 24.04 VPS to a running AI Media Analysis deployment: packages, swap, firewall, unattended security
# updates, a key-only SSH login for the deploy user, the checkout, deploy/.env with random secrets, and the compose
# stack. It works on the checkout it sits in (or --dir). cloud-init's user-data clones the project and runs it once on
# first boot; it is idempotent, so it can be run again by hand, also on a VPS set up without cloud-init:
#
#   sudo bash infra/cloud-init/bootstrap.sh --domain media.example.com --email ops@example.com
#
# --dry-run prints every step (commands and file contents) and changes nothing; it needs no root.
set -euo pipefail

# The only inbound ports: SSH, and nginx's HTTP (ACME challenges, redirect) and HTTPS.
ALLOWED_TCP_PORTS=(22 80 443)
# Docker publishes ports through its own iptables chains, past ufw: the compose stack may publish only these.
PUBLISHABLE_PORTS=(80 443)
PACKAGES=(ca-certificates git openssl python3 ufw unattended-upgrades docker.io docker-compose-v2)
SWAP_FILE=/swapfile
SSHD_DROP_IN=/etc/ssh/sshd_config.d/01-mam-hardening.conf
AUTO_UPGRADES=/etc/apt/apt.conf.d/20auto-upgrades
# Read after Ubuntu's 50unattended-upgrades; its #clear lines drop the distro's origins before ours are set.
UNATTENDED_UPGRADES=/etc/apt/apt.conf.d/52unattended-upgrades-mam

domain=""
email=""
dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
user=deploy
swap_gb=2
reboot_time=04:00
start_stack=1
dry_run=0

usage() {
  cat <<USAGE
Usage: bootstrap.sh --domain DOMAIN --email EMAIL [options]
       bootstrap.sh --check-published-ports < compose-config.json

  --domain DOMAIN       public DNS name of this VPS (nginx and Let's Encrypt)
  --email EMAIL         contact address for Let's Encrypt (kept in deploy/.env as LETSENCRYPT_EMAIL)
  --dir DIR             the project's checkout (default: the one this script is in)
  --user NAME           non-root login with sudo and docker (default: deploy)
  --swap-gb N           swap file size in GB when the machine has no swap (default: 2; 0: none)
  --reboot-time HH:MM   when unattended upgrades may reboot for a new kernel (default: 04:00)
  --no-up               prepare everything but do not start the compose stack
  --dry-run             print the steps and file contents, change nothing
USAGE
}

die_usage() {
  echo "bootstrap.sh: $1" >&2
  usage >&2
  exit 2
}

log() { printf '==> %s\n' "$*"; }

# Runs a command, or prints it under --dry-run.
run() {
  if ((dry_run)); then
    printf '+ %s\n' "$*"
  else
    "$@"
  fi
}

# Writes stdin to a file with the given mode (only when its content changed), or prints it under --dry-run.
write_file() {
  local path=$1 mode=$2 content
  content=$(cat)
  if ((dry_run)); then
    printf '+ write %s (mode %s)\n' "$path" "$mode"
    printf '%s\n' "$content" | sed 's/^/| /'
    return
  fi
  if [[ -f $path ]] && [[ "$(cat "$path")" == "$content" ]]; then
    return
  fi
  install -d -m 0755 "$(dirname "$path")"
  printf '%s\n' "$content" >"$path.tmp"
  chmod "$mode" "$path.tmp"
  mv "$path.tmp" "$path"
}

parse_args() {
  while (($#)); do
    case $1 in
      --domain | --email | --dir | --user | --swap-gb | --reboot-time)
        (($# >= 2)) || die_usage "$1 needs a value"
        case $1 in
          --domain) domain=$2 ;;
          --email) email=$2 ;;
          --dir) dir=$2 ;;
          --user) user=$2 ;;
          --swap-gb) swap_gb=$2 ;;
          --reboot-time) reboot_time=$2 ;;
        esac
        shift 2
        ;;
      --no-up) start_stack=0 && shift ;;
      --dry-run) dry_run=1 && shift ;;
      -h | --help) usage && exit 0 ;;
      *) die_usage "unknown argument: $1" ;;
    esac
  done
  # Values end up in deploy/.env and in useradd's arguments: only plain shapes are accepted.
  [[ $domain =~ ^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$ ]] \
    || die_usage "--domain must be a lower-case DNS name, got '$domain'"
  [[ $email =~ ^[A-Za-z0-9._%+-]+@([A-Za-z0-9-]+\.)+[A-Za-z]{2,63}$ ]] || die_usage "--email is not an address: '$email'"
  [[ -f $dir/deploy/compose.yaml ]] || die_usage "$dir is not the project's checkout (no deploy/compose.yaml)"
  [[ $user =~ ^[a-z_][a-z0-9_-]{0,31}$ && $user != root ]] || die_usage "--user must be a non-root login name"
  [[ $swap_gb =~ ^[0-9]{1,3}$ ]] || die_usage "--swap-gb must be a whole number of GB"
  [[ $reboot_time =~ ^([01][0-9]|2[0-3]):[0-5][0-9]$ ]] || die_usage "--reboot-time must be HH:MM"
}

install_packages() {
  log "packages: ${PACKAGES[*]} (Ubuntu archive)"
  run env DEBIAN_FRONTEND=noninteractive apt-get update -q
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${PACKAGES[@]}"
  run systemctl enable --now docker.service
}

setup_swap() {
  if ((swap_gb == 0)); then
    log "swap: not asked for"
  elif [[ -n "$(swapon --noheadings --show 2>/dev/null)" ]]; then
    log "swap: already active, left as it is"
  else
    log "swap: ${swap_gb} GB at $SWAP_FILE"
    [[ -f $SWAP_FILE ]] || run fallocate -l "${swap_gb}G" "$SWAP_FILE"
    run chmod 600 "$SWAP_FILE"
    run mkswap "$SWAP_FILE"
    run swapon "$SWAP_FILE"
  fi
  if ((swap_gb > 0)) && ! grep -qs "^$SWAP_FILE " /etc/fstab; then
    run sh -c "echo '$SWAP_FILE none swap sw 0 0' >> /etc/fstab"
  fi
  # The box should use swap for spikes only, not to page out PostgreSQL's cache.
  write_file /etc/sysctl.d/90-mam-swap.conf 0644 <<<'vm.swappiness = 10'
  run sysctl -q -p /etc/sysctl.d/90-mam-swap.conf
}

setup_unattended_upgrades() {
  log "unattended upgrades: security updates daily, reboot at $reboot_time when one needs it"
  write_file "$AUTO_UPGRADES" 0644 <<'CONF'
APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Download-Upgradeable-Packages "1";
APT::Periodic::Unattended-Upgrade "1";
APT::Periodic::AutocleanInterval "7";
CONF
  write_file "$UNATTENDED_UPGRADES" 0644 <<CONF
// Security updates only, from Ubuntu's archive (and Ubuntu Pro's ESM when attached). Written by bootstrap.sh.
#clear Unattended-Upgrade::Allowed-Origins;
#clear Unattended-Upgrade::Origins-Pattern;
Unattended-Upgrade::Allowed-Origins {
    "\${distro_id}:\${distro_codename}-security";
    "\${distro_id}ESMApps:\${distro_codename}-apps-security";
    "\${distro_id}ESMInfra:\${distro_codename}-infra-security";
};
Unattended-Upgrade::Remove-Unused-Kernel-Packages "true";
Unattended-Upgrade::Remove-Unused-Dependencies "true";
Unattended-Upgrade::Automatic-Reboot "true";
Unattended-Upgrade::Automatic-Reboot-Time "$reboot_time";
CONF
  run systemctl enable --now unattended-upgrades.service
}

setup_firewall() {
  log "firewall: deny incoming except ${ALLOWED_TCP_PORTS[*]}/tcp"
  run ufw default deny incoming
  run ufw default allow outgoing
  local port
  # SSH is allowed before the firewall is enabled, so this session is never cut off.
  for port in "${ALLOWED_TCP_PORTS[@]}"; do
    run ufw allow "$port/tcp"
  done
  run ufw --force enable
}

setup_user() {
  log "user: $user (sudo, docker)"
  if ! id -u "$user" >/dev/null 2>&1; then
    run useradd --create-home --shell /bin/bash "$user"
  fi
  run usermod -aG sudo,docker "$user"
  # The user logs in with a key only and has no password, so sudo cannot ask for one.
  write_file "/etc/sudoers.d/90-mam-$user" 0440 <<<"$user ALL=(ALL) NOPASSWD:ALL"
  run visudo -cq -f "/etc/sudoers.d/90-mam-$user"
  local home keys
  home=$(getent passwd "$user" | cut -d: -f6 || true)
  home=${home:-/home/$user}
  keys="$home/.ssh/authorized_keys"
  # On a VPS set up by hand, root's key becomes the user's, so that disabling root login locks nobody out.
  if [[ ! -s $keys && -s /root/.ssh/authorized_keys ]]; then
    run install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
    run install -m 0600 -o "$user" -g "$user" /root/.ssh/authorized_keys "$keys"
  fi
}

harden_ssh() {
  local home
  home=$(getent passwd "$user" | cut -d: -f6 || true)
  if ((!dry_run)) && [[ ! -s ${home:-/home/$user}/.ssh/authorized_keys ]]; then
    echo "WARNING: $user has no SSH key; password and root logins stay as they are (add a key, run again)" >&2
    return
  fi
  log "ssh: keys only, no root login"
  # sshd keeps the first value it reads and includes sshd_config.d/*.conf in name order: 01- wins over
  # cloud-init's 50-cloud-init.conf and the distro's defaults.
  write_file "$SSHD_DROP_IN" 0644 <<'CONF'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
CONF
  # sshd refuses to test its configuration without this directory, which socket-activated ssh has not made yet.
  run install -d -m 0755 /run/sshd
  run sshd -t
  run systemctl try-reload-or-restart ssh.service
}

checkout() {
  log "checkout: $dir, owned by $user"
  run chown -R "$user:$user" "$dir"
}

# Sets KEY=VALUE in an env file: the line is replaced where the key exists, else appended.
set_env_value() {
  local file=$1 key=$2 value=$3
  if ((dry_run)); then
    printf '+ set %s=%s in %s\n' "$key" "$value" "$file"
    return
  fi
  awk -v key="$key" -v value="$value" '
    index($0, key "=") == 1 { print key "=" value; done = 1; next }
    { print }
    END { if (!done) print key "=" value }
  ' "$file" >"$file.tmp"
  cat "$file.tmp" >"$file"
  rm -f "$file.tmp"
}

make_env() {
  local env_file=$dir/deploy/.env
  if [[ -f $env_file ]]; then
    log "env: $env_file exists, its secrets are kept"
  else
    log "env: $env_file with new random secrets"
    run bash "$dir/deploy/make-env.sh"
  fi
  set_env_value "$env_file" DOMAIN "$domain"
  set_env_value "$env_file" LETSENCRYPT_EMAIL "$email"
  run chown "$user:$user" "$env_file"
  run chmod 600 "$env_file"
}

# Reads `docker compose config --format json` on stdin; fails when a service publishes a port outside
# PUBLISHABLE_PORTS (Docker's published ports are reachable even where ufw denies them).
check_published_ports() {
  python3 -c '
import json, sys
allowed = {int(p) for p in sys.argv[1:]}
bad = []
for name, service in (json.load(sys.stdin).get("services") or {}).items():
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            published, host_ip = port.get("published"), port.get("host_ip", "")
        else:
            parts = str(port).rsplit(":", 2)
            published, host_ip = (parts[-2] if len(parts) > 1 else None), (parts[0] if len(parts) == 3 else "")
        if host_ip in ("127.0.0.1", "::1", "[::1]"):
            continue
        if published is None or not str(published).isdigit() or int(published) not in allowed:
            bad.append(f"{name}: {port}")
if bad:
    sys.exit("published outside the firewall allow list: " + "; ".join(bad))
' "${PUBLISHABLE_PORTS[@]}"
}

# Whether deploy/.env names a certificate folder of the user's own (TLS_CERTS) instead of Let's Encrypt's volume.
own_certificate() {
  grep -Eqs '^TLS_CERTS=.+' "$dir/deploy/.env" && ! grep -Eqs '^TLS_CERTS=letsencrypt$' "$dir/deploy/.env"
}

start_compose() {
  local compose=(docker compose -f "$dir/deploy/compose.yaml" --env-file "$dir/deploy/.env")
  local letsencrypt=1
  if ((!dry_run)) && own_certificate; then
    letsencrypt=0
  fi
  ((letsencrypt)) && compose+=(--profile letsencrypt)
  log "compose: checking published ports (${PUBLISHABLE_PORTS[*]} only)"
  if ((dry_run)); then
    printf '+ %s config --format json | check published ports\n' "${compose[*]}"
  else
    "${compose[@]}" config --format json | check_published_ports
  fi
  ((start_stack)) || return 0
  # nginx starts only with a certificate, so the first one is fetched by certbot's own server on port 80 before
  # nginx holds that port; the certbot service renews it through nginx afterwards. DNS must point here already.
  if ((letsencrypt)); then
    local live="/etc/letsencrypt/live/$domain/fullchain.pem"
    if ((!dry_run)) && "${compose[@]}" run --rm --no-deps --entrypoint test certbot -s "$live"; then
      log "tls: the Let's Encrypt certificate for $domain exists"
    else
      log "tls: first Let's Encrypt certificate for $domain"
      run "${compose[@]}" run --rm --no-deps --publish 80:80 --entrypoint certbot certbot certonly --standalone \
        --non-interactive --agree-tos --keep-until-expiring --email "$email" --domain "$domain"
    fi
  fi
  log "compose: starting the stack"
  run "${compose[@]}" up -d
}

main() {
  if [[ ${1:-} == --check-published-ports ]]; then
    check_published_ports
    return
  fi
  parse_args "$@"
  if ((!dry_run)) && ((EUID != 0)); then
    die_usage "run as root (sudo), or with --dry-run"
  fi
  install_packages
  setup_swap
  setup_unattended_upgrades
  setup_firewall
  setup_user
  harden_ssh
  checkout
  make_env
  start_compose
  log "done: https://$domain (first start takes a few minutes; docker compose ps shows the health)"
}

main "$@"
