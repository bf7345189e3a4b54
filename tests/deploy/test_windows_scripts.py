"""deploy/windows: the local-GPU install, start and tag scripts parse, need no administrator, and cannot drift from
the CLIs they call (each option they pass is checked against the real ``--help``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest

from tests.deploy.linters import ROOT, powershell_syntax_errors

WINDOWS = ROOT / "deploy" / "windows"
SCRIPTS = sorted(WINDOWS.glob("*.ps1"))
INSTALL, START, TAG = WINDOWS / "install.ps1", WINDOWS / "start.ps1", WINDOWS / "tag-folder.ps1"


def _text(script: Path) -> str:
    return script.read_text(encoding="utf-8")


@cache
def _help(*command: str) -> str:
    """The real ``--help`` of one of our console scripts, wide enough that no option is cut."""
    executable = Path(sys.executable).parent / command[0]
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    done = subprocess.run(
        [str(executable), *command[1:], "--help"], capture_output=True, text=True, env=env, check=False, timeout=120
    )
    assert done.returncode == 0, f"{' '.join(command)} --help failed: {done.stderr}"
    return done.stdout


def _options_given_to(script: Path, array: str) -> list[str]:
    """The ``--options`` a script puts into its argument array ``$<array>`` for one of our CLIs."""
    lines = [line for line in _text(script).splitlines() if re.search(rf"\${array}\s*\+?=", line)]
    return sorted({option for line in lines for option in re.findall(r"'(--[a-z][a-z0-9-]*)'", line)})


def test_the_three_scripts_are_there() -> None:
    assert [script.name for script in SCRIPTS] == ["install.ps1", "start.ps1", "tag-folder.ps1"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_each_script_parses_without_errors(script: Path) -> None:
    assert powershell_syntax_errors(script) == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_no_script_needs_an_administrator_conda_or_powershell_7(script: Path) -> None:
    text = _text(script)

    assert not re.search(r"#requires\s+-runasadministrator", text, re.IGNORECASE)
    assert not re.search(r"set-executionpolicy[^\n]*localmachine", text, re.IGNORECASE)
    assert not re.search(r"\bconda\b", text, re.IGNORECASE)
    assert not re.search(r"\bHKLM:|Program Files\\|ProgramData|\bStart-Process\b[^\n]*-Verb\s+RunAs", text)
    # PowerShell 7-only operators: null-coalescing, pipeline chains, null-conditional member access.
    assert "??" not in text and "&&" not in text and "||" not in text and "?." not in text


def test_install_takes_torch_built_for_cuda_12_8_with_the_worker_images_pins() -> None:
    text = _text(INSTALL)

    assert "[string]$TorchIndexUrl = 'https://download.pytorch.org/whl/cu128'" in text
    image = (ROOT / "deploy" / "worker" / "Dockerfile").read_text(encoding="utf-8")
    torch_pin = re.search(r"^ARG TORCH_VERSION=(\S+)$", image, re.MULTILINE)
    vision_pin = re.search(r"^ARG TORCHVISION_VERSION=(\S+)$", image, re.MULTILINE)
    assert torch_pin and vision_pin
    assert f"[string]$TorchVersion = '{torch_pin[1]}'" in text
    assert f"[string]$TorchvisionVersion = '{vision_pin[1]}'" in text
    # The local version label makes pip replace a CPU-only torch of the same version number.
    assert '"torch==$TorchVersion+$cudaTag"' in text and '"torchvision==$TorchvisionVersion+$cudaTag"' in text
    assert "'--index-url', $TorchIndexUrl" in text
    assert "'--no-deps', 'facenet-pytorch>=2.6'" in text
    assert "'--editable', ($RepoRoot + '[worker]')" in text


def test_install_accepts_python_3_12_or_3_11_and_says_how_to_get_it() -> None:
    text = _text(INSTALL)

    assert "$SupportedPythons = @('3.12', '3.11')" in text
    assert "Get-PythonInfo -Program 'py' -PrefixArguments @(\"-$version\")" in text  # py -3.12, then py -3.11
    assert "foreach ($name in @('python', 'python3'))" in text
    assert "winget install Python.Python.3.12 --scope user" in text and "python.org" in text
    assert "exit 2" in text


def test_install_fetches_every_default_model_of_the_catalog() -> None:
    from gpu_worker.settings import (
        DEFAULT_CLIP_MODEL,
        DEFAULT_FACE_DETECTOR_MODEL,
        DEFAULT_FACES_MODEL,
        DEFAULT_NSFW_MODEL,
        DEFAULT_OBJECTS_MODEL,
        DEFAULT_TRANSCRIBE_MODEL,
    )

    listed = re.search(r"\[string\[\]\]\$Models = @\((.*?)\)", _text(INSTALL), re.DOTALL)
    assert listed is not None
    models = re.findall(r"'([^']+)'", listed.group(1))
    defaults = {
        DEFAULT_CLIP_MODEL,
        DEFAULT_NSFW_MODEL,
        DEFAULT_OBJECTS_MODEL,
        DEFAULT_FACE_DETECTOR_MODEL,
        DEFAULT_FACES_MODEL,
        DEFAULT_TRANSCRIBE_MODEL,
    }
    assert set(models) == defaults
    catalog = tomllib.loads((ROOT / "config" / "models.toml").read_text(encoding="utf-8"))
    assert defaults <= {model["id"] for model in catalog["model"]}
    assert "@('models', 'fetch', $model)" in _text(INSTALL)
    assert "Usage: gpu-worker models fetch" in _help("gpu-worker", "models", "fetch")


def test_the_console_programs_the_scripts_run_are_the_projects_entry_points() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    used = {name for script in SCRIPTS for name in re.findall(r"'([a-z-]+)\.exe'", _text(script))}

    assert used - {"python", "exiftool", "taskkill"} == {"gpu-worker", "orchestrator"}
    assert {"gpu-worker", "orchestrator"} <= set(scripts)


def test_every_option_tag_folder_passes_exists_in_gpu_worker_tag() -> None:
    used = _options_given_to(TAG, "tagArgs")
    help_text = _help("gpu-worker", "tag")

    assert used == [
        "--analyzers",
        "--backup",
        "--batch-size",
        "--device",
        "--exiftool",
        "--mode",
        "--report",
        "--resume",
        "--write",
    ]
    assert [option for option in used if option not in help_text] == []
    assert "$tagArgs = @('tag', $Target," in _text(TAG)


@pytest.mark.parametrize(("parameter", "option"), [("Write", "--write"), ("Mode", "--mode"), ("Device", "--device")])
def test_tag_folders_choices_are_the_clis_choices(parameter: str, option: str) -> None:
    declared = re.search(rf"\[ValidateSet\(([^)]*)\)\]\s*\[string\]\${parameter} = '(\w+)'", _text(TAG))
    offered = re.search(rf"{option}\s+<([a-z|]+)>", _help("gpu-worker", "tag"))
    assert declared is not None and offered is not None

    assert re.findall(r"'(\w+)'", declared.group(1)) == offered.group(1).split("|")


def test_every_option_start_passes_exists_in_orchestrator_up() -> None:
    used = _options_given_to(START, "upArgs")
    help_text = _help("orchestrator", "up")

    assert used == ["--data-dir", "--host", "--port"]
    assert [option for option in used if option not in help_text] == []
    assert "$upArgs = @('up'," in _text(START)


def test_start_waits_for_the_apis_health_endpoint_and_opens_the_dashboard() -> None:
    from orchestrator.api.main import create_app

    paths = {getattr(route, "path", "") for route in create_app().routes}
    text = _text(START)

    assert "/healthz" in paths and "$healthUrl = $dashboardUrl + 'healthz'" in text
    assert "Start-Process $dashboardUrl" in text
    assert "Join-Path $InstallRoot 'data'" in text and "Join-Path $env:LOCALAPPDATA 'AIMediaAnalysis'" in text


def test_install_checks_the_gpu_with_the_workers_selfcheck() -> None:
    used = _options_given_to(INSTALL, "selfcheckArgs")

    assert used == ["--device"]
    assert "--device" in _help("gpu-worker", "selfcheck")
    assert "$selfcheckArgs = @('selfcheck', '--device', 'cuda')" in _text(INSTALL)


def test_the_shortcut_is_per_user_send_to_and_desktop() -> None:
    text = _text(TAG)

    assert "New-Object -ComObject WScript.Shell" in text
    assert "[Environment]::GetFolderPath('SendTo')" in text and "[Environment]::GetFolderPath('Desktop')" in text
    assert "CommonDesktop" not in text and "CommonStartMenu" not in text
    assert "-ExecutionPolicy Bypass -File" in text


def test_install_puts_exiftool_where_the_worker_looks_for_it() -> None:
    from gpu_worker.tagging.exiftool_locate import INSTALL_FOLDER_NAME, WINDOWS_NAMES

    text = _text(INSTALL)

    assert f"Join-Path (Split-Path $VenvDir -Parent) '{INSTALL_FOLDER_NAME}'" in text
    assert f"@('{WINDOWS_NAMES[0]}', '{WINDOWS_NAMES[1]}')" in text
    assert "-Algorithm SHA256" in text  # the download is checked against exiftool.org's published checksum
