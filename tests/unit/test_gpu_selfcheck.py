"""The GPU self-check: the architecture rule as plain data, and the real worker refusing to become ready on a GPU
its torch build cannot drive (torch's device queries faked to report an RTX 5090), while a CPU worker still is."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from gpu_worker.cli import app as cli_app
from gpu_worker.selfcheck import (
    ArchEntry,
    ArchSupport,
    CheckStatus,
    GpuCheck,
    TorchFacts,
    arch_support,
    check_gpu,
    judge_environment,
    judge_kernel,
    parse_arch,
    probe_torch,
    run_tiny_kernel,
)
from gpu_worker.server import create_app
from gpu_worker.settings import DeviceChoice, WorkerSettings
from tests.fixtures.processes import wait_until
from tests.fixtures.tiny_models import TINY_CLIP_ID

TOKEN = "selfcheck-test-token-7c1e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# torch 2.5.1+cu124's list: kernels up to Hopper, PTX for none (the build that trips RTX 5090 owners).
CU124_ARCHS = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")
CU128_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120")
RTX_5090 = "NVIDIA GeForce RTX 5090"
NO_KERNEL_IMAGE = (
    "CUDA error: no kernel image is available for execution on the device\n"
    "CUDA kernel errors might be asynchronously reported at some other API call"
)


def facts(capability: tuple[int, int] | None, archs: tuple[str, ...], name: str = RTX_5090) -> TorchFacts:
    return TorchFacts(
        torch_version="2.5.1+cu124",
        cuda_version="12.4",
        cuda_available=capability is not None,
        arch_list=archs,
        gpu_name=name if capability else None,
        capability=capability,
    )


# --- the architecture rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "parsed"),
    [
        ("sm_86", ArchEntry(ptx=False, capability=(8, 6), suffix="")),
        ("sm_120", ArchEntry(ptx=False, capability=(12, 0), suffix="")),
        ("compute_90", ArchEntry(ptx=True, capability=(9, 0), suffix="")),
        ("sm_90a", ArchEntry(ptx=False, capability=(9, 0), suffix="a")),
        ("sm_100f", ArchEntry(ptx=False, capability=(10, 0), suffix="f")),
        ("gfx90a", None),
        ("sm_", None),
        ("sm_9x", None),
    ],
)
def test_arch_list_entries_are_parsed_into_kind_and_capability(entry: str, parsed: ArchEntry | None) -> None:
    assert parse_arch(entry) == parsed


def test_sm120_on_a_build_that_stops_at_sm90_is_refused_with_the_gpu_versions_archs_and_fix() -> None:
    check = judge_environment(DeviceChoice.CUDA, facts((12, 0), CU124_ARCHS))

    assert check.status is CheckStatus.FAILED and check.device is None
    assert check.support is ArchSupport.NONE
    for needed in (
        "does not support sm_120",
        RTX_5090,
        "compute capability 12.0",
        "torch 2.5.1+cu124 (CUDA 12.4)",
        " ".join(CU124_ARCHS),
        "CUDA 12.8+",
        "https://download.pytorch.org/whl/cu128",
    ):
        assert needed in check.message, needed


def test_sm89_runs_natively_on_an_sm86_cubin_of_the_same_major() -> None:
    assert arch_support((8, 9), ("sm_80", "sm_86", "sm_90")) == (ArchSupport.NATIVE, "sm_80")
    check = judge_environment(DeviceChoice.CUDA, facts((8, 9), ("sm_86", "sm_90"), "NVIDIA GeForce RTX 4090"))
    assert check.status is CheckStatus.OK and check.device == "cuda"
    assert "sm_86" in check.message


@pytest.mark.parametrize(
    ("capability", "archs"),
    [
        ((12, 0), ("sm_90", "sm_100")),  # no forward binary compatibility across majors, even to a newer one
        ((9, 0), ("sm_80", "sm_86", "sm_89")),
        ((8, 0), ("sm_86", "sm_90")),  # a lower minor than the cubin's
    ],
)
def test_cubins_never_cross_a_major_nor_run_below_their_minor(
    capability: tuple[int, int], archs: tuple[str, ...]
) -> None:
    assert arch_support(capability, archs) == (ArchSupport.NONE, None)


def test_sm120_with_only_compute_90_ptx_passes_with_a_warning_naming_the_jit_and_the_better_build() -> None:
    check = judge_environment(DeviceChoice.CUDA, facts((12, 0), ("sm_80", "sm_86", "sm_90", "compute_90")))

    assert check.status is CheckStatus.WARNING and not check.failed
    assert check.device == "cuda" and check.support is ArchSupport.PTX_JIT
    assert "compute_90" in check.message and "compiled by the driver" in check.message
    assert "download.pytorch.org/whl/cu128" in check.message


def test_ptx_never_runs_below_its_capability_and_native_kernels_beat_ptx() -> None:
    assert arch_support((8, 6), ("compute_90",)) == (ArchSupport.NONE, None)
    assert arch_support((12, 0), ("compute_120", "sm_120")) == (ArchSupport.NATIVE, "sm_120")


def test_architecture_specific_entries_run_on_their_exact_capability_only() -> None:
    assert arch_support((9, 0), ("sm_90a",)) == (ArchSupport.NATIVE, "sm_90a")
    assert arch_support((10, 0), ("compute_90a",)) == (ArchSupport.NONE, None)
    assert arch_support((10, 3), ("sm_100f",)) == (ArchSupport.NATIVE, "sm_100f")


@given(
    major=st.integers(min_value=3, max_value=13),
    minor=st.integers(min_value=0, max_value=9),
    others=st.lists(st.sampled_from(CU124_ARCHS + CU128_ARCHS + ("compute_90", "sm_90a")), max_size=6),
)
def test_a_build_listing_a_gpus_own_sm_always_runs_it_natively(major: int, minor: int, others: list[str]) -> None:
    archs = (*others, f"sm_{major}{minor}")
    assert arch_support((major, minor), archs)[0] is ArchSupport.NATIVE


def test_a_gpu_older_than_everything_in_the_build_is_told_the_build_dropped_it() -> None:
    check = judge_environment(DeviceChoice.CUDA, facts((6, 1), CU128_ARCHS, "NVIDIA GeForce GTX 1080"))
    assert check.failed
    assert "dropped GPUs this old" in check.message and "sm_75" in check.message and "sm_61" in check.message


# --- which device is required ----------------------------------------------------------------------------------


def test_the_cpu_device_skips_the_gpu_check() -> None:
    check = judge_environment(DeviceChoice.CPU, facts((12, 0), CU124_ARCHS))
    assert check.status is CheckStatus.SKIPPED and check.device == "cpu"


def test_auto_without_a_gpu_runs_on_the_cpu_but_auto_with_an_unsupported_gpu_fails() -> None:
    assert judge_environment(DeviceChoice.AUTO, facts(None, CU124_ARCHS)).device == "cpu"
    assert judge_environment(DeviceChoice.AUTO, facts((12, 0), CU124_ARCHS)).failed


def test_cuda_required_without_a_device_names_the_driver_the_cuda_build_needs() -> None:
    cu128 = TorchFacts(torch_version="2.10.0+cu128", cuda_version="12.8", cuda_available=False, arch_list=())
    check = judge_environment(DeviceChoice.CUDA, cu128)
    assert check.failed
    assert "sees no CUDA device" in check.message
    assert "--gpus all" in check.message and "driver 570 or newer" in check.message


def test_cuda_required_on_this_machines_cpu_only_torch_fails_saying_it_is_a_cpu_build() -> None:
    real = probe_torch()  # the test machine's real torch: a CPU build, no GPU
    assert real.cuda_version is None and not real.cuda_available

    check = check_gpu(DeviceChoice.CUDA)
    assert check.failed
    assert f"CPU-only torch build (torch {real.torch_version})" in check.message
    assert "GPUW_DEVICE=auto (or cpu)" in check.message


# --- the test kernel -------------------------------------------------------------------------------------------


def test_the_tiny_kernel_runs_and_matches_on_the_cpu_and_reports_torch_s_error_on_a_missing_device() -> None:
    assert run_tiny_kernel("cpu") is None
    assert run_tiny_kernel("cuda") == "AssertionError: Torch not compiled with CUDA enabled"


def test_a_missing_kernel_image_fails_with_the_arch_fix_and_other_kernel_errors_with_the_hardware_advice() -> None:
    passed = judge_environment(DeviceChoice.CUDA, facts((12, 0), ("sm_90", "compute_90")))

    missing = judge_kernel(passed, f"RuntimeError: {NO_KERNEL_IMAGE.splitlines()[0]}")
    assert missing.failed and missing.device is None
    assert "no kernel image is available" in missing.message and "whl/cu128" in missing.message

    other = judge_kernel(passed, "RuntimeError: CUDA error: an illegal memory access was encountered")
    assert other.failed and "nvidia-smi" in other.message
    assert judge_kernel(passed, None) is passed


# --- the real server and command -------------------------------------------------------------------------------


@pytest.fixture
def fake_rtx_5090_under_cu124(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch reports an RTX 5090 (12.0) and a CUDA 12.4 build whose kernels stop at sm_90."""
    properties = SimpleNamespace(name=RTX_5090, major=12, minor=0, total_memory=32 * 1024**3, multi_processor_count=170)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (12, 0))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(CU124_ARCHS))
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu124")


def _settled(client: TestClient) -> dict[str, object]:
    wait_until(lambda: client.get("/healthz").json()["status"] != "loading", 120, "warm-up to end")
    body: dict[str, object] = client.get("/healthz").json()
    return body


def test_server_on_an_rtx_5090_with_a_cu124_torch_reports_failed_with_the_fix_and_is_never_ready(
    fake_rtx_5090_under_cu124: None, tmp_path: Path, tiny_clip_catalog: Path
) -> None:
    settings = WorkerSettings(
        models_dir=tmp_path, catalog_paths=[tiny_clip_catalog], clip_model=TINY_CLIP_ID, device="cuda"
    )
    with TestClient(create_app(settings, token=TOKEN, analyzers=["clip"])) as client:
        body = _settled(client)
        health = client.get("/healthz")
        info = client.get("/v1/info", headers=AUTH).json()

    assert health.status_code == 503
    assert body["status"] == "failed" and body["models"] == {}
    message = health.json()["errors"]["gpu"]
    assert "does not support sm_120" in message and RTX_5090 in message
    assert "2.5.1+cu124" in message and "https://download.pytorch.org/whl/cu128" in message
    assert info["gpu_check"]["status"] == "failed"
    assert info["gpu_check"]["facts"]["capability"] == [12, 0]


def test_server_whose_gpu_passes_the_arch_rule_but_fails_the_test_kernel_is_never_ready(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_clip_catalog: Path
) -> None:
    # An RTX 4090 (8.9) the build covers through sm_86; the kernel then really runs on this CPU-only torch.
    properties = SimpleNamespace(name="NVIDIA GeForce RTX 4090", major=8, minor=9, total_memory=24 * 1024**3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_80", "sm_86", "sm_90"])
    settings = WorkerSettings(
        models_dir=tmp_path, catalog_paths=[tiny_clip_catalog], clip_model=TINY_CLIP_ID, device="cuda"
    )
    with TestClient(create_app(settings, token=TOKEN, analyzers=["clip"])) as client:
        body = _settled(client)

    assert body["status"] == "failed"
    errors = body["errors"]
    assert isinstance(errors, dict)
    assert errors["gpu"].startswith("a test kernel failed on NVIDIA GeForce RTX 4090, compute capability 8.9")
    assert "Torch not compiled with CUDA enabled" in errors["gpu"]


def test_server_on_the_cpu_skips_the_gpu_check_and_becomes_ready(tmp_path: Path, tiny_clip_catalog: Path) -> None:
    settings = WorkerSettings(
        models_dir=tmp_path,
        catalog_paths=[tiny_clip_catalog],
        clip_model=TINY_CLIP_ID,
        device="cpu",
        serve_warmup_images=1,
    )
    with TestClient(create_app(settings, token=TOKEN, analyzers=["clip"])) as client:
        body = _settled(client)
        info = client.get("/v1/info", headers=AUTH).json()

    assert body["status"] == "ready" and body["models"] == {"clip": TINY_CLIP_ID}
    assert info["gpu_check"]["status"] == "skipped" and info["gpu_check"]["device"] == "cpu"


def test_selfcheck_command_warms_up_like_serve_and_exits_0_with_a_json_report(tiny_clip_env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        cli_app, ["selfcheck", "--json", "--analyzers", "clip"], env={"GPUW_SERVE_WARMUP_IMAGES": "1"}
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["status"] == "ready"
    assert report["models"] == {"clip": TINY_CLIP_ID}
    assert report["gpu_check"]["status"] == "skipped"
    assert report["warmup"]["items"] == 1 and report["warmup"]["items_per_s"] > 0
    assert report["hardware"]["device_name"] == "cpu"


def test_selfcheck_command_on_a_fake_rtx_5090_exits_1_with_the_message(
    fake_rtx_5090_under_cu124: None, tiny_clip_env: dict[str, str]
) -> None:
    result = CliRunner().invoke(cli_app, ["selfcheck", "--device", "cuda"], env={"COLUMNS": "400"})

    assert result.exit_code == 1
    assert "GPU check: failed: this torch build does not support sm_120" in result.stdout
    assert "worker: failed on no device" in result.stdout


def test_check_result_serialises_to_json_for_info_and_the_command() -> None:
    check: GpuCheck = judge_environment(DeviceChoice.CUDA, facts((12, 0), CU124_ARCHS))
    assert json.loads(json.dumps(check.as_dict()))["facts"]["arch_list"] == list(CU124_ARCHS)
