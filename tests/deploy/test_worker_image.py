"""The worker image's Dockerfile, read as data: lint-clean, a CUDA 12.8+ base, torch from the cu128 index, models
baked and verified at build time, offline and non-root at run time, ``gpu-worker serve`` by default. Its ENV lines
are fed to the real ``WorkerSettings``; its HEALTHCHECK script runs against real HTTP and HTTPS servers."""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shlex
import ssl
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gpu_worker.offline import OFFLINE_SWITCHES
from gpu_worker.settings import DeviceChoice, WorkerSettings
from orchestrator.settings import Settings as OrchestratorSettings
from tests.deploy.linters import ROOT, hadolint

DOCKERFILE = ROOT / "deploy" / "worker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HEALTHCHECK_SCRIPT = ROOT / "deploy" / "worker" / "healthcheck.py"
MIN_CUDA = (12, 8)
# The first torch release with sm_120 (Blackwell consumer GPUs) kernels in its CUDA 12.8 builds.
MIN_TORCH_FOR_SM120 = (2, 7)


@dataclass
class Stage:
    """One build stage: its base image and its instructions as (KEYWORD, arguments), continuations joined."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def args(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        """The stage's ARG defaults, with build-arg ``overrides``."""
        found: dict[str, str] = {}
        for declaration in self.all("ARG"):
            name, _, default = declaration.partition("=")
            found[name] = (overrides or {}).get(name, _unquote(default))
        return found


def _unquote(value: str) -> str:
    return shlex.split(value)[0] if value.strip() else ""


def instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions: comments dropped (also inside continuations), ``\\`` continuations joined."""
    joined: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    result = []
    for line in joined:
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults (before the first FROM) and the stages in order."""
    global_args: dict[str, str] = {}
    found: list[Stage] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            words = args.split()
            image = next(w for w in words if not w.startswith("--"))
            name = words[words.index("AS") + 1] if "AS" in words else None
            found.append(Stage(base=image, name=name))
        elif not found:
            if keyword == "ARG":
                name, _, default = args.partition("=")
                global_args[name] = _unquote(default)
        else:
            found[-1].instructions.append((keyword, args))
    return global_args, found


def substitute(value: str, variables: Mapping[str, str]) -> str:
    """``${NAME}`` and ``$NAME`` replaced from ``variables``; unknown names stay as they are."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


def env_of(stage: Stage, build_args: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a stage's ENV lines set, with its ARGs (and ``build_args``) substituted."""
    variables = stage.args(build_args)
    env: dict[str, str] = {}
    for line in stage.all("ENV"):
        for pair in shlex.split(line):
            name, _, value = pair.partition("=")
            env[name] = substitute(value, {**variables, **env})
    return env


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return stages(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def builder(dockerfile: tuple[dict[str, str], list[Stage]]) -> Stage:
    return next(s for s in dockerfile[1] if s.name == "builder")


@pytest.fixture(scope="module")
def runtime(dockerfile: tuple[dict[str, str], list[Stage]]) -> Stage:
    return dockerfile[1][-1]


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


# --- lint and structure ----------------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint_without_warnings() -> None:
    assert hadolint(DOCKERFILE) == []


def test_the_runtime_base_is_cuda_12_8_or_newer_with_cudnn_on_ubuntu_24_04(
    dockerfile: tuple[dict[str, str], list[Stage]], runtime: Stage
) -> None:
    global_args, _ = dockerfile
    base = substitute(runtime.base, global_args)
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu24\.04", base)
    assert match, f"runtime base {base!r} is not an exact nvidia/cuda cudnn-runtime tag"
    assert (int(match[1]), int(match[2])) >= MIN_CUDA
    assert runtime.name == "runtime"


def test_torch_comes_from_the_cu128_index_at_a_release_with_sm120_and_its_matching_torchvision(
    builder: Stage,
) -> None:
    args = builder.args()
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cu128"
    torch_version, vision_version = version_tuple(args["TORCH_VERSION"]), version_tuple(args["TORCHVISION_VERSION"])
    assert len(torch_version) == 3 and len(vision_version) == 3, "exact pins"
    assert torch_version[:2] >= MIN_TORCH_FOR_SM120
    # torchvision 0.N+15 is built against torch 2.N (0.22 for 2.7, 0.25 for 2.10).
    assert vision_version[:2] == (0, torch_version[1] + 15)
    install = next(run for run in builder.all("RUN") if '--index-url "${TORCH_INDEX_URL}"' in run)
    assert '"torch==${TORCH_VERSION}"' in install and '"torchvision==${TORCHVISION_VERSION}"' in install
    project = next(run for run in builder.all("RUN") if '".[worker]"' in run)
    assert "-c /opt/torch-pins.txt" in project, "the project's dependencies must not replace the cu128 torch"
    assert '--no-deps "facenet-pytorch==' in project


def test_the_default_models_are_baked_at_build_time_with_downloads_allowed_only_there_and_then_verified(
    builder: Stage, runtime: Stage
) -> None:
    bake = next(run for run in builder.all("RUN") if "gpu-worker models fetch" in run)
    assert 'GPUW_ALLOW_DOWNLOAD=1 gpu-worker models fetch "${model}"' in bake
    assert 'gpu-worker models import-bundle "${bundle}"' in bake
    assert 'gpu-worker models verify "${model}"' in bake
    assert "GPUW_ALLOW_DOWNLOAD" not in env_of(builder), "downloads are allowed for the fetch command alone"
    assert (
        WorkerSettings.model_validate({"allow_download": env_of(runtime)["GPUW_ALLOW_DOWNLOAD"]}).allow_download
        is False
    )

    baked = set(builder.args()["MODELS"].split())
    defaults = WorkerSettings.model_fields
    wanted = {
        str(defaults[name].default)
        for name in (
            "clip_model",
            "nsfw_model",
            "faces_model",
            "face_detector_model",
            "objects_model",
            "transcribe_model",
        )
    }
    assert baked == wanted, "the image bakes exactly the models the worker uses by default"
    catalog = tomllib.loads((ROOT / "config" / "models.toml").read_text(encoding="utf-8"))
    assert baked <= {entry["id"] for entry in catalog["model"]}
    assert builder.args()["MODEL_SOURCE"] == "fetch"
    assert any(
        "--from=builder" in copy and "/opt/models" in copy and "--chown=10001:10001" in copy
        for copy in runtime.all("COPY")
    )


def test_the_final_stage_is_offline_non_root_and_serves_by_default_with_a_healthcheck(runtime: Stage) -> None:
    env = env_of(runtime)
    for switch in OFFLINE_SWITCHES:
        assert env[switch] == "1", switch
    assert env["HF_HUB_OFFLINE"] == "1"

    keywords = [key for key, _ in runtime.instructions]
    user_at = max(i for i, key in enumerate(keywords) if key == "USER")
    assert user_at < keywords.index("ENTRYPOINT")
    user = runtime.instructions[user_at][1].split(":")[0]
    assert user not in ("root", "0") and int(user) == 10001

    assert json.loads(runtime.all("ENTRYPOINT")[-1]) + json.loads(runtime.all("CMD")[-1]) == ["gpu-worker", "serve"]
    assert json.loads(runtime.all("ENTRYPOINT")[-1]) == ["gpu-worker"], "`docker run IMAGE selfcheck` must work"

    (healthcheck,) = runtime.all("HEALTHCHECK")
    start_period = re.search(r"--start-period=(\d+)s", healthcheck)
    assert start_period and int(start_period[1]) >= 300, "model loading and warm-up must not count as unhealthy"
    assert json.loads(healthcheck.split("CMD", 1)[1]) == ["python", "/opt/ai-media-analysis/healthcheck.py"]
    assert "deploy/worker/healthcheck.py /opt/ai-media-analysis/healthcheck.py" in runtime.all("COPY")
    assert runtime.all("EXPOSE") == [str(OrchestratorSettings.model_fields["cloud_worker_port"].default)]

    labels = " ".join(runtime.all("LABEL"))
    for key in ("title", "version", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_every_apt_package_is_pinned_to_an_upstream_version(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    for stage in dockerfile[1]:
        for run in stage.all("RUN"):
            if "apt-get install" not in run:
                continue
            words = run.split("apt-get install", 1)[1].split("&&", 1)[0].split()
            packages = [w for w in words if not w.startswith("-")]
            assert packages and all(re.fullmatch(r"[a-z0-9.+-]+=[0-9][\w.+~-]*\*?", p) for p in packages), packages
            assert "rm -rf /var/lib/apt/lists/*" in run


# --- the settings the image runs with --------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in list(os.environ):
        if name.startswith("GPUW_"):
            monkeypatch.delenv(name)
    yield monkeypatch


def apply_image_env(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> None:
    """Set the image's ENV in this process, PATH aside (it names the image's venv and would hide this one's)."""
    for name, value in env.items():
        if name != "PATH":
            monkeypatch.setenv(name, value)


def test_worker_settings_from_exactly_the_images_env_give_cuda_on_every_interface_port_8700(
    runtime: Stage, clean_env: pytest.MonkeyPatch
) -> None:
    apply_image_env(clean_env, env_of(runtime))
    settings = WorkerSettings()

    assert settings.device is DeviceChoice.CUDA
    assert settings.serve_host == "0.0.0.0"
    assert settings.serve_port == 8700 == OrchestratorSettings.model_fields["cloud_worker_port"].default
    assert settings.models_dir == Path("/opt/models")
    assert settings.config_dir == Path("/opt/ai-media-analysis/config")
    assert settings.allow_download is False
    assert any(copy.endswith("/opt/ai-media-analysis/config/") for copy in runtime.all("COPY"))


def test_what_the_orchestrator_sends_at_create_time_overrides_the_images_env(
    runtime: Stage, clean_env: pytest.MonkeyPatch
) -> None:
    apply_image_env(clean_env, env_of(runtime))
    # The names and encodings orchestrator/cloud/actuator.py puts in the LaunchSpec's env.
    clean_env.setenv("GPUW_SERVE_ANALYZERS", json.dumps(["clip", "objects"]))
    clean_env.setenv("GPUW_SERVE_PORT", "8701")
    settings = WorkerSettings()

    assert settings.serve_analyzers == ["clip", "objects"]
    assert settings.serve_port == 8701


def test_the_cpu_variant_built_with_worker_device_cpu_runs_on_the_cpu(
    runtime: Stage, clean_env: pytest.MonkeyPatch
) -> None:
    apply_image_env(clean_env, env_of(runtime, {"WORKER_DEVICE": "cpu"}))
    assert WorkerSettings().device is DeviceChoice.CPU


# --- the build context -----------------------------------------------------------------------------------------


def _matches(path: str, glob: str) -> bool:
    # Python's "*" also crosses "/", so "*/x" stands for Docker's "**/x" at any depth.
    if glob.startswith("**/"):
        return fnmatch.fnmatchcase(path, glob[3:]) or fnmatch.fnmatchcase(path, "*/" + glob[3:])
    return fnmatch.fnmatchcase(path, glob)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's ``patterns`` exclude ``path`` (or a folder above it); a later ``!`` re-includes."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        glob = pattern.removeprefix("!").strip("/")
        if any(_matches(prefix, glob) for prefix in prefixes):
            excluded = not pattern.startswith("!")
    return excluded


def test_dockerignore_keeps_local_and_secret_files_out_but_everything_the_dockerfile_copies_in(
    builder: Stage, runtime: Stage
) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for unwanted in (".git", ".venv", "data", "test-artifacts", ".mypy_cache", "gpu_worker/__pycache__", "a/.env"):
        assert _ignored(unwanted, patterns), unwanted

    sources = []
    for stage in (builder, runtime):
        for copy in stage.all("COPY"):
            if "--from=" in copy:
                continue
            words = [w for w in copy.split() if not w.startswith("--")]
            sources += words[:-1]
    bind = re.search(r"--mount=type=bind,source=([^,]+),", " ".join(builder.all("RUN")))
    assert bind
    sources.append(bind[1])
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _ignored(source, patterns), f"{source} is copied but .dockerignore excludes it"


# --- the HEALTHCHECK script ------------------------------------------------------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = json.dumps({"status": "ready" if self.status == 200 else "loading"}).encode()
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server(request: pytest.FixtureRequest) -> Iterator[tuple[int, type[_Health], http.server.HTTPServer]]:
    handler = type("Health", (_Health,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler, server
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK_SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_healthcheck_passes_on_200_and_fails_on_503_with_the_body(
    health_server: tuple[int, type[_Health], http.server.HTTPServer],
) -> None:
    port, handler, _ = health_server
    assert run_healthcheck({"GPUW_SERVE_PORT": str(port)}).returncode == 0

    handler.status = 503
    loading = run_healthcheck({"GPUW_SERVE_PORT": str(port)})
    assert loading.returncode == 1
    assert "503" in loading.stderr and "loading" in loading.stderr


def test_healthcheck_fails_when_nothing_listens(
    health_server: tuple[int, type[_Health], http.server.HTTPServer],
) -> None:
    port, _, server = health_server
    server.shutdown()
    server.server_close()
    assert run_healthcheck({"GPUW_SERVE_PORT": str(port)}).returncode == 1


def test_healthcheck_speaks_https_pinned_to_the_instances_own_certificate(
    health_server: tuple[int, type[_Health], http.server.HTTPServer], tmp_path: Path
) -> None:
    from orchestrator.cloud.tls import new_instance_identity

    port, _, server = health_server
    identity = new_instance_identity()
    (tmp_path / "cert.pem").write_text(identity.cert_pem)
    (tmp_path / "key.pem").write_text(identity.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)

    assert run_healthcheck({"GPUW_SERVE_PORT": str(port), "GPUW_TLS_CERT_PEM": identity.cert_pem}).returncode == 0
    stranger = new_instance_identity().cert_pem
    refused = run_healthcheck({"GPUW_SERVE_PORT": str(port), "GPUW_TLS_CERT_PEM": stranger})
    assert refused.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr
