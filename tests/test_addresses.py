"""addresses: the one gate every address passes (import, add, sync)."""

from __future__ import annotations

import pytest

from newsletter.audience.addresses import normalise_email
from newsletter.errors import SubscriberError


@pytest.mark.parametrize(
    "address",
    [
        "a" * 65 + "@example.com",  # dot-atom, takes the fast path's fallback
        "a" * 61 + "+tag@example.com",
        "a" * 30 + "." + "b" * 34 + "@example.org",
    ],
)
def test_a_local_part_over_64_octets_is_refused(address: str) -> None:
    # RFC 5321 §4.5.3.1.1; email-validator checks it only in strict mode.
    with pytest.raises(SubscriberError, match="longer than 64"):
        normalise_email(address)


def test_a_local_part_of_exactly_64_octets_is_fine() -> None:
    local = "a" * 64
    assert normalise_email(f"{local}@Example.COM").email == f"{local}@example.com"
