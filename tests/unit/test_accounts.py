"""Password verifiers and the sign-in redirect target, without a database."""

from __future__ import annotations

import pytest

from orchestrator.accounts import hash_password, verify_password
from orchestrator.api.dashboard.web import safe_next


def test_a_password_verifies_against_its_own_hash_only() -> None:
    verifier = hash_password("correct horse battery")
    assert verifier.startswith("scrypt$")
    assert verify_password("correct horse battery", verifier)
    assert not verify_password("correct horse batterY", verifier)


def test_the_same_password_hashes_differently_each_time() -> None:
    assert hash_password("correct horse battery") != hash_password("correct horse battery")


@pytest.mark.parametrize("verifier", ["", "plain", "scrypt$1$2$3$x", "bcrypt$1$1$1$AAAA$AAAA", "scrypt$a$b$c$d$e"])
def test_a_malformed_verifier_never_matches(verifier: str) -> None:
    assert not verify_password("anything", verifier)


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("/jobs?page=2", "/jobs?page=2"),
        ("//evil.example/x", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("jobs", "/"),
        ("/jobs\r\nSet-Cookie: x", "/"),
        ("", "/"),
        (None, "/"),
    ],
)
def test_after_sign_in_only_same_site_paths_are_followed(requested: str | None, expected: str) -> None:
    assert safe_next(requested) == expected
