"""The dashboard in a real browser: headless Chromium against ``orchestrator up`` (the embedded default) on
127.0.0.1, walking the path of a user from signing in to signing out, with a screenshot of every page."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Error, Page, Response, expect

from tests.browser.conftest import Screenshots
from tests.fixtures.deployment import Deployment
from tests.fixtures.factories import truncated_jpeg

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

PHOTOS = ("zidane.jpg", "bus.jpg", "grace_hopper.jpg")
CORRUPT = "corrupt.jpg"
USERNAME = "ada"
PASSWORD = "correct horse battery staple"
# Playwright's auto-waiting bounds, in ms: a page or a form post on this 2-core machine, and the whole analysis of
# three photos with CLIP, faces and objects on its CPU (about a minute).
PAGE_TIMEOUT_MS = 15_000
JOB_DONE_TIMEOUT_MS = 120_000


@dataclass
class Watched:
    """What the browser saw go wrong: uncaught JavaScript errors, console errors and 5xx responses."""

    problems: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> Page:
        """Record ``page``'s errors from now on; returns it."""
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.on("pageerror", lambda exc: self.problems.append(f"JavaScript error on {page.url}: {exc}"))
        page.on("console", lambda msg: self._console(page, msg))
        page.on("response", self._response)
        return page

    def _console(self, page: Page, msg: ConsoleMessage) -> None:
        # Chromium logs every 4xx response too (a wrong password answers 401); those are the pages' business.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            self.problems.append(f"console error on {page.url}: {msg.text}")

    def _response(self, response: Response) -> None:
        if response.status >= 500:
            self.problems.append(f"{response.status} from {response.request.method} {response.url}")


@dataclass
class Walk:
    """A user's browser tab on the deployment, and where its screenshots go."""

    page: Page
    deployment: Deployment
    shots: Screenshots

    def url(self, path: str) -> str:
        """The deployment's address of ``path``."""
        return f"{self.deployment.url}{path}"


@contextmanager
def step(name: str, walk: Walk) -> Iterator[None]:
    """One step of the walk; when it fails, a screenshot shows where the browser was (the deployment fixture prints
    the server's logs)."""
    try:
        yield
    except (AssertionError, Error) as exc:
        with suppress(Error):
            walk.shots.take(walk.page, f"failed-{name.replace(' ', '-')}")
        raise AssertionError(f"step {name!r} failed at {walk.page.url}: {exc}") from exc


@pytest.fixture
def models_env(cpu_models_env: dict[str, str]) -> dict[str, str]:
    """The CPU models of ``tests/fixtures/cpu_models.py``: tiny CLIP, MTCNN with a seeded FaceNet, and the shared
    person detector and open_nsfw when present."""
    return cpu_models_env


@pytest.fixture
def photos(shared_media: Path, tmp_path: Path) -> list[Path]:
    """The three shared photos and a truncated JPEG, as a user picks them in the file dialog."""
    folder = tmp_path / "picked"
    folder.mkdir()
    picked = [Path(shutil.copy(shared_media / name, folder / name)) for name in PHOTOS]
    (folder / CORRUPT).write_bytes(truncated_jpeg())
    return [*picked, folder / CORRUPT]


@pytest.fixture
def deployment(start_deployment: Callable[[dict[str, str]], Deployment], models_env: dict[str, str]) -> Deployment:
    """``orchestrator up`` with the CPU models, and a member user of its default tenant made with the CLI."""
    running = start_deployment(models_env)
    added = running.cli("users", "add", USERNAME, "--tenant", "default", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, f"orchestrator users add failed:\n{added.stdout}{added.stderr}"
    return running


def api_get(deployment: Deployment, path: str) -> dict[str, Any]:
    """A REST GET with the default tenant's API key: what the server holds, to compare the pages with."""
    response = httpx.get(
        f"{deployment.url}/api/v1{path}", headers={"Authorization": f"Bearer {deployment.api_key}"}, timeout=10
    )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def sign_in_with_a_password(walk: Walk) -> None:
    """A signed-out visit to /jobs asks to sign in; a wrong password is refused, the right one lands on /jobs."""
    page = walk.page
    page.goto(walk.url("/jobs"))
    expect(page).to_have_url(re.compile(r"/login\?next=(/|%2F)jobs$"))
    walk.shots.take(page, "01-login")
    page.fill("#username", USERNAME)
    page.fill("#password", "not the password")
    page.click("#sign-in")
    expect(page.locator("#login-error")).to_be_visible()
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    expect(page).to_have_url(walk.url("/jobs"))
    expect(page.locator("#sign-out")).to_be_visible()


def upload_and_start(walk: Walk, files: list[Path]) -> str:
    """Pick the files on /upload, wait for every row to settle, start the analysis; returns the job's id."""
    page = walk.page
    page.goto(walk.url("/upload"))
    page.set_input_files("#file-input", [str(path) for path in files])
    rows = page.locator(".upload-row")
    expect(rows).to_have_count(len(files))
    settled = page.locator('.upload-row[data-status="accepted"], .upload-row[data-status="rejected"]')
    expect(settled).to_have_count(len(files))
    for name in PHOTOS:
        expect(rows.filter(has_text=name)).to_have_attribute("data-status", "accepted")
    start = page.locator("#start-analysis")
    expect(start).to_be_enabled()
    walk.shots.take(page, "02-upload")
    start.click()
    expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    return page.url.rsplit("/", 1)[-1]


def watch_the_job_finish(walk: Walk, job_id: str) -> None:
    """The job page turns to done by itself, and lists the corrupt file with its reason."""
    page = walk.page
    # A property of this document: a reload would drop it, so it proves that the status changed in place.
    page.evaluate("window.__notReloaded = true")
    expect(page.locator("#job-status")).to_have_text("done", timeout=JOB_DONE_TIMEOUT_MS)
    assert page.evaluate("window.__notReloaded === true"), "the job page reloaded instead of updating in place"
    expect(page.locator("main tr").filter(has_text=CORRUPT)).to_contain_text("truncated")
    walk.shots.take(page, "03-job-done")
    job = api_get(walk.deployment, f"/jobs/{job_id}")
    assert "faces" in job["analyzers"], job


def open_from_the_gallery(walk: Walk, name: str) -> str:
    """The gallery shows a card per uploaded file (the corrupt one as failed); clicking ``name``'s opens its page.
    Returns the asset's id."""
    page = walk.page
    page.goto(walk.url("/gallery"))
    cards = page.locator(".asset-card")
    for photo in PHOTOS:
        expect(cards.filter(has_text=photo)).to_have_attribute("data-status", "done")
    expect(cards.filter(has_text=CORRUPT)).to_have_attribute("data-status", "failed")
    walk.shots.take(page, "04-gallery")
    cards.filter(has_text=name).click()
    expect(page).to_have_url(re.compile(r"/assets/[0-9a-f-]{36}$"))
    return page.url.rsplit("/", 1)[-1]


def see_tags_and_boxes(walk: Walk, asset_id: str) -> None:
    """The asset page shows its tags, a box over every face the results hold (and the people the objects analyzer
    found, when it ran), and blurs nothing of a safe photo."""
    page = walk.page
    expect(page.locator(".tag[data-tag]").first).to_be_visible()
    results = api_get(walk.deployment, f"/assets/{asset_id}")["results"]
    assert "faces" in results, f"the asset has no faces results: {results}"
    faces = page.locator(".box.box-face")
    expect(faces.first).to_be_visible()
    expect(faces).to_have_count(int(results["faces"]["face_count"]))
    if "objects" in results:
        expect(page.locator(".box.box-object").first).to_be_visible()
    # open_nsfw scores these photos near 0.
    expect(page.locator("[data-nsfw]")).to_have_count(0)
    walk.shots.take(page, "05-asset")


def set_the_daily_cap(walk: Walk) -> None:
    """A negative cap is refused next to its field and not saved; a valid one is saved and shown after a reload."""
    page = walk.page
    page.goto(walk.url("/settings"))
    cap = page.locator("#daily_cap_usd")
    before = cap.input_value()
    cap.fill("-5")
    page.click("#save-settings")
    expect(page.locator("#error-daily_cap_usd")).to_be_visible()
    expect(page.locator("#saved-notice")).to_have_count(0)
    walk.shots.take(page, "06-settings-error")
    page.goto(walk.url("/settings"))
    expect(page.locator("#daily_cap_usd")).to_have_value(before)
    page.fill("#daily_cap_usd", "12.5")
    page.click("#save-settings")
    expect(page.locator("#saved-notice")).to_be_visible()
    walk.shots.take(page, "07-settings-saved")
    page.reload()
    expect(page.locator("#daily_cap_usd")).to_have_value(re.compile(r"^12\.50?$"))


def look_at_spend(walk: Walk) -> None:
    """The spend page shows the daily cap just saved."""
    response = walk.page.goto(walk.url("/spend"))
    assert response is not None and response.ok, response
    expect(walk.page.locator("main")).to_contain_text("$12.50")
    walk.shots.take(walk.page, "08-spend")


def sign_in_with_the_api_key_on_a_phone(walk: Walk) -> None:
    """On a phone, the API-key form signs in too, and the jobs list fits the narrow screen."""
    page = walk.page
    page.goto(walk.url("/login?next=/jobs"))
    page.locator("details summary").click()
    page.fill("#api-key", walk.deployment.api_key)
    page.click("#sign-in-key")
    expect(page).to_have_url(walk.url("/jobs"))
    expect(page.locator("main")).to_contain_text("done")
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than the phone's screen"
    walk.shots.take(page, "09-phone-jobs")


def sign_out(walk: Walk) -> None:
    """Signing out shows the sign-in page, and the dashboard asks to sign in again."""
    page = walk.page
    page.click("#sign-out")
    expect(page).to_have_url(re.compile(r"/login"))
    expect(page.locator("#username")).to_be_visible()
    page.goto(walk.url("/jobs"))
    expect(page).to_have_url(re.compile(r"/login\?next="))


def test_a_member_signs_in_uploads_watches_the_job_opens_an_asset_sets_a_budget_and_signs_out(
    photos: list[Path], deployment: Deployment, desktop: BrowserContext, phone: BrowserContext, screenshots: Screenshots
) -> None:
    expect.set_options(timeout=PAGE_TIMEOUT_MS)
    watched = Watched()
    walk = Walk(watched.attach(desktop.new_page()), deployment, screenshots)

    with step("sign in", walk):
        sign_in_with_a_password(walk)
    with step("upload", walk):
        job_id = upload_and_start(walk, photos)
    with step("job", walk):
        watch_the_job_finish(walk, job_id)
    with step("gallery", walk):
        asset_id = open_from_the_gallery(walk, PHOTOS[0])
    with step("asset", walk):
        see_tags_and_boxes(walk, asset_id)
    with step("settings", walk):
        set_the_daily_cap(walk)
    with step("spend", walk):
        look_at_spend(walk)
    on_phone = Walk(watched.attach(phone.new_page()), deployment, screenshots)
    with step("phone", on_phone):
        sign_in_with_the_api_key_on_a_phone(on_phone)
    with step("sign out", walk):
        sign_out(walk)

    assert not watched.problems, "\n".join(watched.problems)
