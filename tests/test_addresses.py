"""addresses: the one gate every address passes (import, add, sync)."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletter.audience import addresses
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


# --------------------------------------------------------------------------- the fast path


def _by_email_validator(raw: str) -> tuple[str, str] | str:
    """What email-validator alone (the slow path) makes of `raw`: (email, key) or "error"."""
    text = addresses._strip_decoration(raw)
    try:
        if not text:
            raise SubscriberError("empty email address")
        address = addresses._slow_path(text)
    except SubscriberError:
        return "error"
    return address.email, address.key


def _by_normalised(raw: str) -> tuple[str, str] | str:
    try:
        return addresses.normalised(raw)
    except SubscriberError:
        return "error"


_ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
_local = st.text(alphabet=_ATEXT + "..", max_size=20) | st.text(
    alphabet=_ATEXT + ".",
    min_size=60,
    max_size=70,  # around the 64-octet limit
)
_label = st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=0, max_size=66)
_domain = st.lists(_label, min_size=1, max_size=5).map(".".join) | st.sampled_from(
    ["example.com", "EXAMPLE.ORG", "example.com.", "-x.example.net", "xn--bcher-kva.example",
     "a" * 250 + ".com", "example", "localhost", "127.0.0.1", "[127.0.0.1]", "bücher.example",
     "example..com", "ex_ample.com", "123.example", "example.123", "XN--BCHER-KVA.EXAMPLE",
     "Xn--Bcher-Kva.Example", "EXAMPLE.COM.", "LOCALHOST"]
)  # fmt: skip
_noise = st.sampled_from(["", " ", "\t", "<", ">", "mailto:", "@", '"', "é", "\u00a0", "\u200b"])


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_noise, _local, _noise, _domain, _noise)
def test_the_fast_path_agrees_with_email_validator(
    before: str, local: str, middle: str, domain: str, after: str
) -> None:
    """Whatever takes the one-regex fast path comes out exactly as email-validator
    (plus our 64-octet rule) would make it, errors included."""
    raw = f"{before}{local}{middle}@{domain}{after}"
    assert _by_normalised(raw) == _by_email_validator(raw)


@pytest.mark.parametrize(
    "raw",
    ["User.Name+tag@Example.COM", " a@example.com ", "a..b@example.com", ".a@example.com",
     "a.@example.com", "a@-example.com", "a@example", "a@example.com.", "a@xn--bcher-kva.example",
     "a@" + "b" * 64 + ".com", "<a@example.com>", "mailto:a@example.com", "a@b@example.com",
     "a" * 64 + "@" + ".".join(["b" * 63] * 3) + ".com", "a" * 65 + "@example.com"],
)  # fmt: skip
def test_the_fast_path_agrees_on_edge_cases(raw: str) -> None:
    assert _by_normalised(raw) == _by_email_validator(raw)


@pytest.mark.parametrize(
    ("raw", "email"),
    [
        ("Alice <alice@Example.COM>", "alice@example.com"),
        ('"Smith, John" <john@example.org>', "john@example.org"),
        ("  Zoë Müller <mailto:zoe@example.net> ", "zoe@example.net"),
        ("<a@example.com>", "a@example.com"),
    ],
)
def test_a_name_and_address_form_gives_the_address(raw: str, email: str) -> None:
    """`Name <addr>` (what a mail client's copy or a contacts export gives)
    was refused: "a display name and angle brackets … are not permitted",
    though the module says it drops those brackets."""
    assert normalise_email(raw).email == email


@pytest.mark.parametrize(
    "raw",
    [
        "a@example.com, Bo <bo@example.net>",
        "a@example.com <bo@example.net>",
        "x; Bo <bo@example.net>",
    ],
)
def test_two_addresses_in_one_cell_are_refused_not_read_as_the_last(raw: str) -> None:
    with pytest.raises(SubscriberError):
        normalise_email(raw)
