"""Chromium (Debian's package, installed from apt when absent) driven headless by Playwright, and screenshots.

Playwright's own browser downloads are never used: the pip package ``playwright`` launches ``/usr/bin/chromium``.
The browser is shared by every test in this package and closed after the last of them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, ViewportSize, sync_playwright

from tests.conftest import REPO_ROOT

CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMIUM_PACKAGE = "chromium"
# Installing chromium and its libraries (about 350 MB) took 11 s from a nearby Debian mirror; a slow one takes
# minutes. pytest-timeout (300 s) bounds the whole test anyway.
APT_TIMEOUT_S = 240
# We run as root in containers, where Chromium's sandbox cannot start; /dev/shm is often 64 MB there.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
DESKTOP_VIEWPORT = ViewportSize(width=1280, height=900)
PHONE_VIEWPORT = ViewportSize(width=390, height=844)
SCREENSHOTS_DIR = REPO_ROOT / "test-artifacts" / "screenshots"


def find_chromium() -> Path | None:
    """The Chromium executable on PATH (Debian's ``chromium``), or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def _apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Another apt run (scripts/install.sh, a colleague's test) may hold the lock for a while.
    command = ["apt-get", "-o", "DPkg::Lock::Timeout=300", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False)


def install_chromium() -> str | None:
    """Install Debian's ``chromium`` with apt-get (``apt-get update`` first only when the plain install fails).

    Returns None on success, else why it could not be installed.
    """
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "apt-get needs root to install it"
    install = ("install", "-y", "--no-install-recommends", CHROMIUM_PACKAGE)
    done = _apt_get(*install)
    if done.returncode != 0:
        updated = _apt_get("update")
        if updated.returncode != 0:
            return f"apt-get update failed: {(updated.stderr or updated.stdout).strip()[-500:]}"
        done = _apt_get(*install)
    if done.returncode != 0:
        return f"apt-get install {CHROMIUM_PACKAGE} failed: {(done.stderr or done.stdout).strip()[-500:]}"
    return None


@pytest.fixture(scope="session")
def chromium_executable() -> Path:
    """Debian's Chromium, installed from apt when absent; skips only when it is absent and cannot be installed."""
    found = find_chromium()
    if found is None:
        reason = install_chromium()
        found = find_chromium()
        if found is None:
            pytest.skip(f"Chromium is not installed and could not be installed from apt ({reason or 'not found'})")
    return found


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    """Playwright's driver (the sync API), for the browser tests of this package."""
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright, chromium_executable: Path) -> Iterator[Browser]:
    """Headless Chromium, shared by the tests of this package."""
    launched = playwright.chromium.launch(executable_path=str(chromium_executable), headless=True, args=CHROMIUM_ARGS)
    yield launched
    launched.close()


@pytest.fixture
def desktop(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookies) with a 1280x900 window."""
    context = browser.new_context(viewport=DESKTOP_VIEWPORT)
    yield context
    context.close()


@pytest.fixture
def phone(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile with a phone's 390x844 screen (touch, mobile layout)."""
    context = browser.new_context(viewport=PHONE_VIEWPORT, is_mobile=True, has_touch=True, device_scale_factor=2)
    yield context
    context.close()


@dataclass
class Screenshots:
    """Full-page PNGs written to ``test-artifacts/screenshots/`` at the repository root."""

    folder: Path
    taken: list[Path] = field(default_factory=list)

    def take(self, page: Page, name: str) -> Path:
        """Save ``page`` in full as ``<folder>/<name>.png``; returns the path."""
        path = self.folder / f"{name}.png"
        # Transitions (progress bars) are finished first, so a picture shows the state the test just checked.
        page.screenshot(path=str(path), full_page=True, animations="disabled")
        self.taken.append(path)
        return path


_SESSION_SHOTS = Screenshots(SCREENSHOTS_DIR)


@pytest.fixture(scope="session")
def screenshots() -> Screenshots:
    """Where the browser tests' screenshots go (emptied first); the terminal summary lists them."""
    if SCREENSHOTS_DIR.exists():
        for stale in SCREENSHOTS_DIR.glob("*.png"):
            stale.unlink()
    SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
    return _SESSION_SHOTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name the screenshots' folder and files after the run, passed or failed."""
    if _SESSION_SHOTS.taken:
        terminalreporter.write_sep("-", f"screenshots in {SCREENSHOTS_DIR}")
        for path in _SESSION_SHOTS.taken:
            terminalreporter.write_line(f"  {path.name}")
