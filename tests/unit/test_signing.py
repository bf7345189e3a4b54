"""Signed media URLs: a token opens exactly one asset until it expires; any change to it, or another key, breaks it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.settings import PLACEHOLDER_SECRET, Settings
from orchestrator.signing import (
    ExpiredMediaTokenError,
    MediaSigningUnavailableError,
    MediaTokenError,
    MediaUrlSigner,
    media_signer,
)

SECRET = "unit-test-secret-key-with-enough-characters"
BASE = "https://media.example.org/"


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def signer(clock: Clock) -> MediaUrlSigner:
    return MediaUrlSigner(SECRET, base_url=BASE, ttl_s=600, clock=clock)


def test_a_signed_url_opens_its_own_asset_until_it_expires(signer: MediaUrlSigner, clock: Clock) -> None:
    asset = uuid.uuid4()
    url = signer.url_for(asset)
    assert url.startswith("https://media.example.org/media/")
    token = url.rsplit("/", 1)[1]
    assert signer.verify(token) == asset
    clock.advance(599)
    assert signer.verify(token) == asset
    clock.advance(1)
    with pytest.raises(ExpiredMediaTokenError):
        signer.verify(token)


def test_tokens_of_two_assets_differ_and_each_opens_only_its_own(signer: MediaUrlSigner) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    token_1, token_2 = signer.token_for(first), signer.token_for(second)
    assert token_1 != token_2
    assert signer.verify(token_1) == first
    assert signer.verify(token_2) == second


def test_a_token_with_another_asset_id_or_a_later_expiry_is_refused(signer: MediaUrlSigner) -> None:
    asset_hex, expires, signature = signer.token_for(uuid.uuid4()).split(".")
    other_asset = f"{uuid.uuid4().hex}.{expires}.{signature}"
    later = f"{asset_hex}.{int(expires) + 3600}.{signature}"
    flipped = f"{asset_hex}.{expires}.{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}"
    for forged in (other_asset, later, flipped):
        with pytest.raises(MediaTokenError) as caught:
            signer.verify(forged)
        assert not isinstance(caught.value, ExpiredMediaTokenError)


def test_a_token_signed_with_another_secret_is_refused(clock: Clock) -> None:
    ours = MediaUrlSigner(SECRET, base_url=BASE, ttl_s=600, clock=clock)
    theirs = MediaUrlSigner(SECRET + "-other", base_url=BASE, ttl_s=600, clock=clock)
    with pytest.raises(MediaTokenError):
        ours.verify(theirs.token_for(uuid.uuid4()))


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "abc",
        "../../etc/passwd",
        "0f1e2d3c4b5a69788796a5b4c3d2e1f0.1.",
        f"5b0c6a2e-3f41-4d8e-9a57-2c1b0e7d9f34.9999999999.{'a' * 43}",
        "x" * 5000,
    ],
    ids=["empty", "short", "path", "no-signature", "bad-signature", "long"],
)
def test_malformed_tokens_are_refused(signer: MediaUrlSigner, garbage: str) -> None:
    with pytest.raises(MediaTokenError, match="malformed"):
        signer.verify(garbage)


def test_an_expired_token_is_refused_even_when_it_was_genuine(signer: MediaUrlSigner, clock: Clock) -> None:
    token = signer.token_for(uuid.uuid4())
    clock.advance(3600)
    with pytest.raises(ExpiredMediaTokenError, match="expired"):
        signer.verify(token)


def test_the_placeholder_secret_signs_nothing() -> None:
    with pytest.raises(MediaSigningUnavailableError, match="ORCH_SECRET_KEY"):
        MediaUrlSigner(PLACEHOLDER_SECRET, base_url=BASE, ttl_s=60)


def test_the_media_base_url_comes_from_public_url_else_from_the_api_address(clock: Clock) -> None:
    explicit = Settings(secret_key=SECRET, public_url="https://vps.example.org/", media_url_ttl_s=30)
    assert media_signer(explicit, clock).url_for(uuid.uuid4()).startswith("https://vps.example.org/media/")
    wildcard = Settings(secret_key=SECRET, api_host="0.0.0.0", api_port=8123)
    assert wildcard.media_base_url == "http://127.0.0.1:8123"
    assert Settings(secret_key=SECRET, api_host="192.168.1.5").media_base_url == "http://192.168.1.5:8000"
    signer = media_signer(explicit, clock)
    token = signer.token_for(uuid.uuid4())
    clock.advance(30)
    with pytest.raises(ExpiredMediaTokenError):
        signer.verify(token)
