"""Finding things again in a real Chromium: the gallery's search box, people and a person page, "more like this",
text-to-image and the duplicates review, on ``orchestrator up`` with the CPU models and the shared photos."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import BrowserContext, expect

from tests.browser.conftest import Screenshots
from tests.browser.test_dashboard import PAGE_TIMEOUT_MS, Walk, Watched, step
from tests.fixtures.deployment import Deployment

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

PHOTOS = ("zidane.jpg", "bus.jpg", "grace_hopper.jpg")
COPY = "bus_copy.jpg"
USERNAME = "grace"
PASSWORD = "a long and careful passphrase"
PERSON_NAME = "Ada Lovelace"


@pytest.fixture
def library(shared_media: Path, tmp_path: Path) -> list[Path]:
    """The shared photos, a smaller re-encoded copy of bus.jpg, and two red squares and a blue circle."""
    folder = tmp_path / "library"
    folder.mkdir()
    files = [Path(shutil.copy(shared_media / name, folder / name)) for name in PHOTOS]
    with Image.open(shared_media / "bus.jpg") as bus:
        bus.convert("RGB").resize((bus.width * 9 // 10, bus.height * 9 // 10)).save(folder / COPY, quality=80)
    files.append(folder / COPY)
    for name, red, box in (("red_a.png", True, 16), ("red_b.png", True, 22), ("blue_a.png", False, 16)):
        image = Image.new("RGB", (96, 96), (235, 235, 235))
        draw = ImageDraw.Draw(image)
        if red:
            draw.rectangle((box, box, 96 - box, 96 - box), fill=(220, 30, 30))
        else:
            draw.ellipse((box, box, 96 - box, 96 - box), fill=(30, 60, 220))
        image.save(folder / name)
        files.append(folder / name)
    return files


@pytest.fixture
def deployment(
    start_deployment: Callable[[dict[str, str]], Deployment], cpu_models_env: dict[str, str], library: list[Path]
) -> Deployment:
    """``orchestrator up`` with the library analyzed and a member user of its default tenant."""
    running = start_deployment(cpu_models_env)
    added = running.cli("users", "add", USERNAME, "--tenant", "default", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, f"orchestrator users add failed:\n{added.stdout}{added.stderr}"
    submitted = running.submit(*library)
    assert submitted.returncode == 0, f"submit failed:\n{submitted.stdout}{submitted.stderr}"
    return running


def test_a_member_searches_names_a_person_finds_look_alikes_and_reviews_duplicates(
    deployment: Deployment, desktop: BrowserContext, screenshots: Screenshots
) -> None:
    expect.set_options(timeout=PAGE_TIMEOUT_MS)
    watched = Watched()
    walk = Walk(watched.attach(desktop.new_page()), deployment, screenshots)
    page = walk.page

    with step("sign in", walk):
        page.goto(walk.url("/login"))
        page.fill("#username", USERNAME)
        page.fill("#password", PASSWORD)
        page.click("#sign-in")
        expect(page).to_have_url(re.compile(r"/jobs$"))

    with step("search from the gallery", walk):
        page.goto(walk.url("/gallery"))
        page.fill("#search-q", "tag:faces/one kind:image")
        page.locator("#search-q").press("Enter")
        cards = page.locator(".asset-card")
        expect(cards).to_have_count(1)
        expect(cards.first).to_contain_text("grace_hopper.jpg")
        walk.shots.take(page, "20-search")
        page.fill("#search-q", 'tag:faces/* AND (kind:image OR "unclosed')
        page.locator("#search-q").press("Enter")
        expect(page.locator("#error-q")).to_be_visible()
        walk.shots.take(page, "21-search-error")

    with step("name a person", walk):
        page.goto(walk.url("/people"))
        people = page.locator("#people .person-card")
        expect(people.first).to_be_visible()
        walk.shots.take(page, "22-people")
        people.first.locator("a").click()
        expect(page).to_have_url(re.compile(r"/people/[0-9a-f-]{36}$"))
        page.fill("#person-name-input", PERSON_NAME)
        page.get_by_role("button", name="Save name").click()
        expect(page.locator("#person-name")).to_have_text(PERSON_NAME)
        expect(page.locator("#person-assets .person-card").first).to_be_visible()
        walk.shots.take(page, "23-person")
        page.goto(walk.url("/gallery?q=" + 'person:"ada lovelace"'))
        expect(page.locator(".asset-card").first).to_be_visible()

    with step("more like this and text-to-image", walk):
        page.goto(walk.url("/gallery?q=name:red_a"))
        page.locator(".asset-card").first.click()
        page.click("#more-like-this")
        expect(page).to_have_url(re.compile(r"/similar\?asset="))
        expect(page.locator(".asset-card").first).to_contain_text("red_b.png")
        walk.shots.take(page, "24-more-like-this")
        page.fill("#similar-text", "a red square")
        page.get_by_role("button", name="Find").click()
        expect(page.locator(".asset-card").first).to_contain_text(re.compile(r"red_[ab]\.png"))
        walk.shots.take(page, "25-text-to-image")

    with step("review duplicates", walk):
        page.goto(walk.url("/duplicates"))
        page.get_by_role("link", name="Looks the same").click()
        group = page.locator(".duplicate-group").filter(has_text=COPY)
        expect(group).to_contain_text("bus.jpg")
        walk.shots.take(page, "26-duplicates")
        group.get_by_role("button", name="Not duplicates").click()
        expect(page.locator(".duplicate-group").filter(has_text=COPY)).to_have_count(0)

    assert watched.problems == [], watched.problems
