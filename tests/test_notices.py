"""The readers' own emails (confirm, welcome): their headers, built like a post's."""

from __future__ import annotations

import email.policy
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import cast

import pytest
from test_render_support import assert_wire_format, make_settings

from newsletter.email.notices import build_notice

CONTEXT = {
    "confirm_url": "https://news.tides.example.com/confirm/tok",
    "lists": [],
    "key": "k",
    "expires_at": datetime(2026, 12, 3, 6, 0, tzinfo=UTC),
}


def parse(raw: bytes) -> EmailMessage:
    return cast(EmailMessage, email.message_from_bytes(raw, policy=email.policy.default))


@pytest.mark.parametrize("kind", ["confirm", "welcome"])
def test_a_non_ascii_from_domain_goes_in_idna_form(kind: str) -> None:
    """The post path wrote it in IDNA form; the notices crashed on it
    (UnicodeEncodeError, a 500 on /subscribe) and used it raw as the sender."""
    base = make_settings()
    settings = replace(
        base, email=replace(base.email, from_="Tïde Nötes <letters@tïdes.example.com>")
    )
    notice = build_notice(
        settings, kind, "zoe@example.com", "Zoë", {**CONTEXT, "preferences_url": "https://x"}
    )
    assert_wire_format(notice.data)
    head = notice.data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii() and max(len(line) for line in head.split(b"\r\n")) <= 78
    msg = parse(notice.data)
    assert notice.sender == "letters@xn--tdes-5pa.example.com"
    assert msg["From"].addresses[0].display_name == "Tïde Nötes"
    assert msg["From"].addresses[0].addr_spec == notice.sender
    assert str(msg["Message-ID"]).endswith("@xn--tdes-5pa.example.com>")
    assert msg["To"].addresses[0].display_name == "Zoë"
    assert msg["Reply-To"] == "editor@tides.example.com"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert len([k for k in msg if k.lower() in ("from", "to", "subject")]) == 3


def test_a_site_title_that_looks_like_an_encoded_word_stays_literal() -> None:
    base = make_settings()
    settings = replace(base, site=replace(base.site, title="Notes =?utf-8?q?x?="))
    notice = build_notice(settings, "confirm", "zoe@example.com", "", CONTEXT)
    assert parse(notice.data)["Subject"] == "Confirm your subscription to Notes =?utf-8?q?x?="


@pytest.mark.parametrize("kind", ["confirm", "welcome"])
def test_the_footer_starts_with_the_signature_separator(kind: str) -> None:
    notice = build_notice(
        make_settings(), kind, "zoe@example.com", "", {**CONTEXT, "preferences_url": "https://x"}
    )
    text = parse(notice.data).get_body(("plain",))
    assert text is not None and "\n-- \n" in text.get_content().replace("\r\n", "\n")


@pytest.mark.parametrize("kind", ["confirm", "welcome"])
def test_a_non_ascii_notice_is_seven_bit_clean_like_a_post(kind: str) -> None:
    """Posts are quoted-printable; the notices went out `8bit`, which a server
    without 8BITMIME (RFC 6152) need not accept."""
    base = make_settings()
    settings = replace(base, site=replace(base.site, title="Gelgit Notları 🌊"))
    notice = build_notice(
        settings, kind, "zoe@example.com", "Zoë", {**CONTEXT, "preferences_url": "https://x"}
    )
    assert notice.data.isascii()
    msg = parse(notice.data)
    for part in msg.iter_parts():
        assert part["Content-Transfer-Encoding"] in ("quoted-printable", "base64", "7bit")
    text = msg.get_body(("plain",))
    assert text is not None and "Gelgit Notları 🌊" in text.get_content()


def test_a_non_ascii_local_part_is_written_as_utf8() -> None:
    """An internationalised address (RFC 6531) went into `.encode("ascii")`."""
    notice = build_notice(make_settings(), "confirm", "zoë@exämple.com", "Zoë", CONTEXT)
    assert "\r\nTo: =?utf-8?b?Wm/Dqw==?= <zoë@xn--exmple-cua.com>\r\n".encode() in notice.data
