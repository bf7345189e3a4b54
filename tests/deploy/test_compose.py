"""deploy/compose.yaml, its nginx and its env file: valid by the Compose schema, secrets only from deploy/.env, every
long-running service checked, restarted and memory-limited within an 8 GB VPS, Redis that never drops a task, and
nginx that terminates TLS, streams uploads and keeps /metrics private."""

from __future__ import annotations

import itertools
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import crossplane
import pytest

from tests.deploy.compose_model import (
    COMPOSE_FILE,
    DEPLOY,
    ENV_EXAMPLE,
    MissingVariableError,
    container_environment,
    interpolate_text,
    load_compose,
    memory_bytes,
    read_env_file,
    referenced_variables,
    services_in,
)
from tests.deploy.linters import compose_schema_errors, nginx_errors, shellcheck

GIB = 1024**3
MEMORY_BUDGET_BYTES = int(6.5 * GIB)
NGINX_TEMPLATE = DEPLOY / "nginx" / "templates" / "nginx.conf.template"
NGINX_START = DEPLOY / "nginx" / "start.sh"
MAKE_ENV = DEPLOY / "make-env.sh"
ORCHESTRATOR_PROCESSES = ("api", "worker-ingest", "worker-analyze", "worker-maintenance", "beat")
SECRET_VARIABLES = (
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "ORCH_SECRET_KEY",
    "ORCH_ADMIN_TOKEN",
    "ORCH_LOCAL_WORKER_TOKEN",
)
SECRET_KEY_PATTERN = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|AUTH", re.IGNORECASE)
ONLY_REFERENCES = re.compile(r"^(\$\{[^}]+\})+$")


def long_running(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if str(s.get("restart", "no")) != "no"}


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(example_env: dict[str, str]) -> dict[str, Any]:
    return load_compose(example_env)


def test_the_compose_file_is_valid_by_the_compose_schema_before_and_after_interpolation(
    compose: dict[str, Any],
) -> None:
    assert compose_schema_errors(load_compose()) == []
    assert compose_schema_errors(compose) == []


def test_every_variable_compose_uses_is_in_env_example(example_env: dict[str, str]) -> None:
    used = referenced_variables(COMPOSE_FILE.read_text())

    assert used - example_env.keys() == set()
    assert {"DOMAIN", "LETSENCRYPT_EMAIL", *SECRET_VARIABLES} <= example_env.keys()


@pytest.mark.parametrize("secret", SECRET_VARIABLES)
def test_a_missing_secret_stops_compose_config_with_its_name(secret: str, example_env: dict[str, str]) -> None:
    without = {k: v for k, v in example_env.items() if k != secret}
    text = COMPOSE_FILE.read_text()

    references = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
    assert references and all(ref.startswith(":?") for ref in references), references
    with pytest.raises(MissingVariableError, match=f"set {secret} in deploy/.env"):
        interpolate_text(text, without)


def test_compose_holds_no_literal_secret() -> None:
    raw = load_compose()
    for name, service in raw["services"].items():
        for key, value in container_environment(service).items():
            if SECRET_KEY_PATTERN.search(key):
                assert ONLY_REFERENCES.fullmatch(value), f"{name}: {key} must come from deploy/.env"
            for password in re.findall(r"://[^:/@]*:([^@]*)@", value):
                assert ONLY_REFERENCES.fullmatch(password), f"{name}: {key} has a literal password"
        command = service.get("command") or []
        for flag, value in itertools.pairwise(command):
            if flag == "--requirepass":
                assert ONLY_REFERENCES.fullmatch(value), f"{name}: literal --requirepass"


def test_every_long_running_service_has_a_healthcheck_restart_policy_and_memory_limit(
    compose: dict[str, Any],
) -> None:
    services = long_running(compose["services"])

    assert set(services) >= {"postgres", "redis", "nginx", "certbot", "cpu-worker", *ORCHESTRATOR_PROCESSES}
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert memory_bytes(service["mem_limit"]) > 0, name


def test_the_default_profile_fits_an_8_gb_vps_with_room_for_the_os(compose: dict[str, Any]) -> None:
    for profiles in (frozenset(), frozenset({"letsencrypt"})):
        services = services_in(compose, profiles)
        assert all("mem_limit" in s for s in services.values()), profiles
        total = sum(memory_bytes(s["mem_limit"]) for s in services.values())
        assert total <= MEMORY_BUDGET_BYTES, f"{sorted(profiles)}: {total / GIB:.2f} GiB"
    assert "cpu-worker" not in services_in(compose) and "certbot" not in services_in(compose)


def test_redis_persists_every_message_and_never_evicts_one(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=False))

    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"
    assert memory_bytes(options["--maxmemory"]) < memory_bytes(compose["services"]["redis"]["mem_limit"])
    assert any(v.endswith(":/data") for v in compose["services"]["redis"]["volumes"])


def test_the_orchestrator_processes_start_only_after_migrations_completed(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["orchestrator", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ORCHESTRATOR_PROCESSES:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert container_environment(services[name])["ORCH_ENVIRONMENT"] == "production", name


def test_the_workers_cover_every_celery_queue(compose: dict[str, Any]) -> None:
    from orchestrator.tasks.constants import ALL_QUEUES

    consumed: set[str] = set()
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if command[:2] == ["orchestrator", "worker"]:
            consumed |= set(command[command.index("--queues") + 1].split(","))
            assert "--concurrency" in command, name

    assert consumed == set(ALL_QUEUES)


def test_only_nginx_publishes_ports_and_only_80_and_443(compose: dict[str, Any]) -> None:
    publishing = {name: s["ports"] for name, s in compose["services"].items() if s.get("ports")}

    assert publishing == {"nginx": ["80:80", "443:443"]}


def test_the_cpu_worker_is_built_with_the_worker_dockerfiles_build_args(compose: dict[str, Any]) -> None:
    dockerfile = (DEPLOY / "worker" / "Dockerfile").read_text()
    declared = dict(re.findall(r"^ARG (\w+)=(\S+)", dockerfile, flags=re.MULTILINE))
    build = compose["services"]["cpu-worker"]["build"]

    assert build["dockerfile"] == "deploy/worker/Dockerfile"
    assert set(build["args"]) <= set(declared), set(build["args"]) - set(declared)
    assert build["args"]["TORCH_VERSION"] == declared["TORCH_VERSION"]
    assert build["args"]["TORCHVISION_VERSION"] == declared["TORCHVISION_VERSION"]
    assert build["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert compose["services"]["cpu-worker"]["profiles"] == ["cpu-fallback"]


# -- nginx ------------------------------------------------------------------------------------------------------------


def rendered_nginx_conf(tmp_path: Path, example_env: dict[str, str]) -> Path:
    """The template as the nginx image's entrypoint renders it with start.sh's body limit."""
    body = int(example_env["ORCH_MAX_UPLOAD_BYTES"]) + 64 * 1024**2
    text = NGINX_TEMPLATE.read_text()
    for name, value in {"DOMAIN": example_env["DOMAIN"], "CLIENT_MAX_BODY_BYTES": str(body)}.items():
        text = text.replace("${" + name + "}", value)
    target = tmp_path / "nginx.conf"
    target.write_text(text)
    return target


def directives(conf: Path) -> list[dict[str, Any]]:
    parsed = crossplane.parse(str(conf), single=True)
    found: list[dict[str, Any]] = []

    def walk(block: list[dict[str, Any]], parents: tuple[dict[str, Any], ...]) -> None:
        for directive in block:
            found.append({**directive, "parents": parents})
            walk(directive.get("block", []), (*parents, directive))

    walk(parsed["config"][0]["parsed"], ())
    return found


def server_listening_on(all_directives: list[dict[str, Any]], port: str) -> list[dict[str, Any]]:
    servers = [d for d in all_directives if d["directive"] == "server"]
    (server,) = [s for s in servers if any(c["directive"] == "listen" and c["args"][0] == port for c in s["block"])]
    return [d for d in all_directives if any(p["line"] == server["line"] for p in d["parents"])]


def test_the_nginx_template_parses_before_and_after_rendering(tmp_path: Path, example_env: dict[str, str]) -> None:
    assert nginx_errors(NGINX_TEMPLATE) == []
    rendered = rendered_nginx_conf(tmp_path, example_env)
    assert nginx_errors(rendered) == []
    assert "${" not in rendered.read_text()


def test_nginx_redirects_http_to_https_except_acme_challenges(tmp_path: Path, example_env: dict[str, str]) -> None:
    plain = server_listening_on(directives(rendered_nginx_conf(tmp_path, example_env)), "80")
    locations = {tuple(d["args"]): d for d in plain if d["directive"] == "location"}

    acme = locations[("^~", "/.well-known/acme-challenge/")]
    assert ["root", ["/var/www/certbot"]] in [[c["directive"], c["args"]] for c in acme["block"]]
    redirect = locations[("/",)]
    assert [[c["directive"], c["args"]] for c in redirect["block"]] == [
        ["return", ["301", "https://$host$request_uri"]]
    ]


def test_nginx_serves_tls_streams_uploads_and_hides_metrics(tmp_path: Path, example_env: dict[str, str]) -> None:
    tls = server_listening_on(directives(rendered_nginx_conf(tmp_path, example_env)), "443")
    values = {d["directive"]: d["args"] for d in tls if d["directive"] != "add_header"}
    headers = {d["args"][0] for d in tls if d["directive"] == "add_header"}
    locations = {tuple(d["args"]): d for d in tls if d["directive"] == "location"}

    domain = example_env["DOMAIN"]
    assert values["ssl_certificate"] == [f"/etc/letsencrypt/live/{domain}/fullchain.pem"]
    assert values["ssl_protocols"] == ["TLSv1.2", "TLSv1.3"]
    assert int(values["client_max_body_size"][0]) > int(example_env["ORCH_MAX_UPLOAD_BYTES"])
    assert values["proxy_request_buffering"] == ["off"] and values["proxy_buffering"] == ["off"]
    assert {"Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy"} <= headers
    for path in (("=", "/metrics"), ("^~", "/metrics/")):
        assert [[c["directive"], c["args"]] for c in locations[path]["block"]] == [["return", ["404"]]]
    proxied = {c["directive"]: c["args"] for c in locations[("/",)]["block"] if c["directive"] != "proxy_set_header"}
    assert proxied["proxy_pass"] == ["$api_upstream"]
    forwarded = {c["args"][0]: c["args"][1] for c in locations[("/",)]["block"] if c["directive"] == "proxy_set_header"}
    assert forwarded["X-Forwarded-Proto"] == "$scheme" and forwarded["Host"] == "$host"


def test_nginx_renders_only_its_own_variables(compose: dict[str, Any]) -> None:
    environment = container_environment(compose["services"]["nginx"])
    template_variables = set(re.findall(r"\$\{(\w+)\}", NGINX_TEMPLATE.read_text()))

    assert template_variables == {"DOMAIN", "CLIENT_MAX_BODY_BYTES"}
    assert all(re.search(environment["NGINX_ENVSUBST_FILTER"], name) for name in template_variables)
    assert not re.search(environment["NGINX_ENVSUBST_FILTER"], "host")


# -- scripts ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", [MAKE_ENV, NGINX_START], ids=lambda p: p.name)
def test_shell_scripts_are_shellcheck_clean(script: Path) -> None:
    assert shellcheck(script) == []
    assert os.access(script, os.X_OK)


def test_make_env_writes_strong_distinct_secrets_and_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / ".env"

    subprocess.run([str(MAKE_ENV), str(target)], check=True, capture_output=True)

    written = read_env_file(target)
    example = read_env_file(ENV_EXAMPLE)
    assert written.keys() == example.keys()
    secrets = [written[name] for name in SECRET_VARIABLES]
    assert all(re.fullmatch(r"[0-9a-f]{64}", value) for value in secrets)
    assert len(set(secrets)) == len(secrets)
    assert written["ORCH_VAST_API_KEY"] == ""
    assert not [value for value in written.values() if "change-me" in value]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [".env"], "no staging file is left behind"

    before = target.read_bytes()
    again = subprocess.run([str(MAKE_ENV), str(target)], capture_output=True, text=True, check=False)

    assert again.returncode == 1 and "exists" in again.stderr
    assert target.read_bytes() == before


def test_the_real_env_file_is_never_committed() -> None:
    patterns = {line.strip() for line in (DEPLOY.parent / ".gitignore").read_text().splitlines()}

    assert patterns & {"/deploy/.env", "deploy/.env"}
