"""VPS provisioning (infra/cloud-init): the user-data passes cloud-init's own schema validator, rendering fills in
every value and refuses values that could change a command, and bootstrap.sh's plan (its --dry-run) opens exactly
SSH, HTTP and HTTPS, takes security updates only, and refuses a compose stack that publishes anything else.

cloud-init's validator is Debian's cloud-init package unpacked by scripts/install-linters.sh (it is not on PyPI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.linters import ROOT, shellcheck

CLOUD_INIT = ROOT / "infra" / "cloud-init"
USER_DATA = CLOUD_INIT / "user-data.yaml"
BOOTSTRAP = CLOUD_INIT / "bootstrap.sh"
RENDER = CLOUD_INIT / "render.py"
CLOUD_INIT_PYTHONPATH = ROOT / ".venv" / "share" / "cloud-init" / "root" / "usr" / "lib" / "python3" / "dist-packages"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"
GOOD = {
    "domain": "media.example.com",
    "email": "ops@example.com",
    "repo": "https://github.com/o/mam.git",
    "ref": "v1.2",
}
# What Ubuntu 24.04's own 50unattended-upgrades allows (the -updates pocket is commented out there, but a hosting
# provider's image may have turned it on): our file must leave only the security pockets whatever came before.
UBUNTU_UNATTENDED_DEFAULTS = """
Unattended-Upgrade::Allowed-Origins {
    "${distro_id}:${distro_codename}";
    "${distro_id}:${distro_codename}-security";
    "${distro_id}:${distro_codename}-updates";
    "${distro_id}ESMApps:${distro_codename}-apps-security";
    "${distro_id}ESMInfra:${distro_codename}-infra-security";
};
Unattended-Upgrade::Origins-Pattern { "origin=Docker,label=Docker CE"; };
"""


def cloud_init_schema(path: Path) -> subprocess.CompletedProcess[str]:
    """``cloud-init schema --config-file PATH`` from the unpacked Debian package."""
    if not (CLOUD_INIT_PYTHONPATH / "cloudinit").is_dir():
        raise AssertionError("cloud-init's validator is not unpacked; run scripts/install-linters.sh")
    env = {**os.environ, "PYTHONPATH": str(CLOUD_INIT_PYTHONPATH)}
    command = [sys.executable, "-m", "cloudinit.cmd.main", "schema", "--config-file", str(path)]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=120)


def cloud_config_keys() -> set[str]:
    """Every top-level key that cloud-init's schema describes (its validator lets unknown top-level keys pass)."""
    schema_file = CLOUD_INIT_PYTHONPATH / "cloudinit" / "config" / "schemas" / "schema-cloud-config-v1.json"
    schema = json.loads(schema_file.read_text())
    keys: set[str] = set()
    for part in schema["allOf"]:
        definition = schema["$defs"][part["$ref"].removeprefix("#/$defs/")]
        keys |= set(definition.get("properties", {}))
    return keys


def assert_valid_cloud_config(path: Path) -> dict[str, Any]:
    """Passes cloud-init's validator without errors or deprecations, and uses only keys that cloud-init knows."""
    done = cloud_init_schema(path)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Valid cloud-config" in output, output
    assert "deprecat" not in output.lower(), output
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    assert set(document) - cloud_config_keys() == set(), "keys cloud-init would ignore"
    return document


def render(tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    """Run render.py as a user does, with a key file and ``GOOD`` values (``overrides`` replace some)."""
    key_file = tmp_path / "id_ed25519.pub"
    if not key_file.exists():
        key_file.write_text(f"# my laptop\n{SSH_KEY}\n")
    values = {**GOOD, **overrides}
    args = [f"--{name}={value}" for name, value in values.items()]
    command = [sys.executable, str(RENDER), "--ssh-key-file", str(key_file), *args, "-o", str(tmp_path / "ud.yaml")]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


def checkout(tmp_path: Path) -> Path:
    """A folder that bootstrap.sh accepts as the project's checkout."""
    (tmp_path / "deploy").mkdir(exist_ok=True)
    (tmp_path / "deploy" / "compose.yaml").write_text("services: {}\n")
    return tmp_path


def bootstrap(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run bootstrap.sh with ``args``."""
    return subprocess.run(
        ["bash", str(BOOTSTRAP), *args], input=stdin, capture_output=True, text=True, check=False, timeout=60
    )


def dry_run_plan(tmp_path: Path, *extra: str) -> str:
    """bootstrap.sh's printed plan for a fresh VPS."""
    folder = str(checkout(tmp_path))
    done = bootstrap("--dry-run", "--domain", GOOD["domain"], "--email", GOOD["email"], "--dir", folder, *extra)
    assert done.returncode == 0, done.stderr
    return done.stdout


def written_files(plan: str) -> dict[str, str]:
    """The files the plan writes, by path, with their content (``+ write PATH`` followed by ``| line`` lines)."""
    files: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in plan.splitlines():
        if match := re.match(r"^\+ write (\S+) \(mode \d+\)$", line):
            current = files.setdefault(match.group(1), [])
        elif line.startswith("| ") and current is not None:
            current.append(line[2:])
        else:
            current = None
    return {path: "\n".join(lines) + "\n" for path, lines in files.items()}


def test_user_data_template_starts_with_cloud_config_and_passes_cloud_inits_schema() -> None:
    assert USER_DATA.read_text().splitlines()[0] == "#cloud-config"
    document = assert_valid_cloud_config(USER_DATA)
    assert document["ssh_pwauth"] is False and document["disable_root"] is True
    (user,) = document["users"]
    assert user["name"] == "deploy" and user["lock_passwd"] is True


def test_validator_rejects_a_broken_cloud_config(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("#cloud-config\nusers:\n  - name: deploy\n    lock_passwd: true\n    no_such_field: 1\n")
    done = cloud_init_schema(broken)
    assert done.returncode != 0 and "users.0" in done.stdout + done.stderr, "the validator really validates"


def test_rendered_user_data_passes_the_schema_and_carries_every_value(tmp_path: Path) -> None:
    done = render(tmp_path)
    assert done.returncode == 0, done.stderr
    rendered = tmp_path / "ud.yaml"
    assert rendered.read_text().splitlines()[0] == "#cloud-config"
    document = assert_valid_cloud_config(rendered)
    assert "REPLACE_WITH" not in rendered.read_text()
    assert document["users"][0]["ssh_authorized_keys"] == [SSH_KEY], "the comment line of the key file is skipped"
    clone, check_out, run_bootstrap = document["runcmd"]
    assert clone[:3] == ["git", "clone", "--quiet"] and clone[3] == GOOD["repo"]
    assert check_out[-1] == GOOD["ref"]
    assert run_bootstrap[:2] == ["bash", "/opt/ai-media-analysis/infra/cloud-init/bootstrap.sh"]
    assert run_bootstrap[2:] == ["--domain", GOOD["domain"], "--email", GOOD["email"]]
    assert clone[4] == run_bootstrap[1].removesuffix("/infra/cloud-init/bootstrap.sh"), "bootstrap runs in the clone"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("domain", "media.example.com; reboot"),
        ("domain", "Media.Example.com"),
        ("email", "not-an-address"),
        ("repo", "file:///etc"),
        ("repo", "https://example.com/x.git --upload-pack=touch"),
        ("ref", "--upload-pack=touch /tmp/x"),
    ],
)
def test_render_refuses_values_that_could_change_a_command(tmp_path: Path, name: str, value: str) -> None:
    done = render(tmp_path, **{name: value})
    assert done.returncode == 2 and f"--{name}" in done.stderr
    assert not (tmp_path / "ud.yaml").exists()


def test_render_refuses_a_key_file_without_a_public_key(tmp_path: Path) -> None:
    (tmp_path / "id_ed25519.pub").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    done = render(tmp_path)
    assert done.returncode == 2 and "public key" in done.stderr


def test_scripts_are_shellcheck_clean() -> None:
    assert shellcheck(BOOTSTRAP) == []
    assert shellcheck(ROOT / "scripts" / "install-linters.sh") == []


def test_firewall_allows_exactly_ssh_http_and_https_and_ssh_before_enabling(tmp_path: Path) -> None:
    ufw = [line.removeprefix("+ ufw ") for line in dry_run_plan(tmp_path).splitlines() if line.startswith("+ ufw ")]
    assert [rule for rule in ufw if rule.startswith("allow")] == ["allow 22/tcp", "allow 80/tcp", "allow 443/tcp"]
    assert "default deny incoming" in ufw and ufw[-1] == "--force enable"
    assert ufw.index("allow 22/tcp") < ufw.index("--force enable"), "enabling never cuts off the SSH session"
    assert BOOTSTRAP.read_text().count("run ufw ") == 4, "no other ufw call: two defaults, the allow loop, enable"


@pytest.mark.skipif(shutil.which("apt-config") is None, reason="apt-config (Debian/Ubuntu) evaluates apt.conf.d")
def test_unattended_upgrades_take_security_updates_only_and_run_daily(tmp_path: Path) -> None:
    files = written_files(dry_run_plan(tmp_path, "--reboot-time", "03:30"))
    parts = tmp_path / "apt.conf.d"
    parts.mkdir()
    (parts / "50unattended-upgrades").write_text(UBUNTU_UNATTENDED_DEFAULTS)
    for path in ("/etc/apt/apt.conf.d/20auto-upgrades", "/etc/apt/apt.conf.d/52unattended-upgrades-mam"):
        (parts / Path(path).name).write_text(files[path])
    main = tmp_path / "apt.conf"
    main.write_text(f'Dir::Etc::Parts "{parts}";\n')
    done = subprocess.run(
        ["apt-config", "dump"], env={**os.environ, "APT_CONFIG": str(main)}, capture_output=True, text=True, check=True
    )
    config = done.stdout.splitlines()
    origins = [line.split(" ", 1)[1] for line in config if line.startswith("Unattended-Upgrade::Allowed-Origins:: ")]
    assert origins == [
        '"${distro_id}:${distro_codename}-security";',
        '"${distro_id}ESMApps:${distro_codename}-apps-security";',
        '"${distro_id}ESMInfra:${distro_codename}-infra-security";',
    ]
    assert not any(line.startswith("Unattended-Upgrade::Origins-Pattern:: ") for line in config)
    assert 'APT::Periodic::Unattended-Upgrade "1";' in config
    assert 'APT::Periodic::Update-Package-Lists "1";' in config
    assert 'Unattended-Upgrade::Automatic-Reboot-Time "03:30";' in config


def test_plan_hardens_ssh_adds_swap_and_starts_the_stack_last(tmp_path: Path) -> None:
    plan = dry_run_plan(tmp_path)
    files = written_files(plan)
    sshd = files["/etc/ssh/sshd_config.d/01-mam-hardening.conf"].splitlines()
    assert {"PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin no"} <= set(sshd)
    assert files["/etc/sudoers.d/90-mam-deploy"] == "deploy ALL=(ALL) NOPASSWD:ALL\n"
    lines = plan.splitlines()
    if "+ fallocate -l 2G /swapfile" not in lines:
        assert "==> swap: already active, left as it is" in lines
    assert "apt-get install -y -q" in plan and "docker.io docker-compose-v2" in plan, "Ubuntu's own Docker packages"
    assert f"--domain {GOOD['domain']}" in plan and f"+ set DOMAIN={GOOD['domain']} in" in plan
    assert f"+ set LETSENCRYPT_EMAIL={GOOD['email']} in" in plan
    up = [n for n, line in enumerate(lines) if line.startswith("+ docker compose") and line.endswith(" up -d")]
    assert up == [len(lines) - 2], "the stack starts last, after the firewall is on"


def test_no_up_prepares_everything_but_starts_nothing(tmp_path: Path) -> None:
    plan = dry_run_plan(tmp_path, "--no-up")
    assert "+ ufw --force enable" in plan and " up -d" not in plan and "certonly" not in plan


@pytest.mark.parametrize(
    "args",
    [
        ["--email", "ops@example.com"],
        ["--domain", "media.example.com; reboot", "--email", "ops@example.com"],
        ["--domain", "media.example.com", "--email", "ops@example.com", "--reboot-time", "25:00"],
        ["--domain", "media.example.com", "--email", "ops@example.com", "--user", "root"],
        ["--domain", "media.example.com", "--email", "ops@example.com", "--surprise"],
    ],
)
def test_bootstrap_refuses_bad_arguments_before_changing_anything(tmp_path: Path, args: list[str]) -> None:
    done = bootstrap("--dry-run", "--dir", str(checkout(tmp_path)), *args)
    assert done.returncode == 2 and "Usage:" in done.stderr and done.stdout == ""


def test_bootstrap_refuses_a_folder_that_is_not_the_checkout(tmp_path: Path) -> None:
    done = bootstrap("--dry-run", "--dir", str(tmp_path), "--domain", GOOD["domain"], "--email", GOOD["email"])
    assert done.returncode == 2 and "not the project's checkout" in done.stderr


def published_ports_check(services: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """bootstrap.sh's guard on a ``docker compose config --format json`` document with these services."""
    return bootstrap("--check-published-ports", stdin=json.dumps({"services": services}))


def test_published_ports_guard_accepts_nginx_on_80_and_443_and_loopback_only_ports() -> None:
    nginx = {"ports": [{"target": 80, "published": "80"}, {"target": 443, "published": "443", "host_ip": ""}]}
    postgres = {"ports": ["127.0.0.1:5432:5432"]}
    done = published_ports_check({"nginx": nginx, "postgres": postgres, "api": {}})
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("service", "ports"),
    [
        ("redis", ["6379:6379"]),
        ("api", [{"target": 8000, "published": "8000"}]),
        ("api", ["8000"]),  # a random host port: still reachable past ufw
        ("api", ["0.0.0.0:9000-9010:9000-9010"]),
    ],
)
def test_published_ports_guard_refuses_what_would_bypass_the_firewall(service: str, ports: list[Any]) -> None:
    done = published_ports_check({"nginx": {"ports": ["80:80", "443:443"]}, service: {"ports": ports}})
    assert done.returncode != 0 and f"{service}:" in done.stderr


def test_the_projects_compose_file_passes_the_published_ports_guard() -> None:
    compose = ROOT / "deploy" / "compose.yaml"
    if not compose.is_file():
        pytest.skip("deploy/compose.yaml is not there yet")
    document = yaml.safe_load(compose.read_text())
    done = published_ports_check(document["services"])
    assert done.returncode == 0, done.stderr
