"""DKIM: sign the exact bytes sent; verify with dkimpy against a stub DNS."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import Engine

from newsletter.audience import members as subs
from newsletter.config import DkimSettings, load_settings
from newsletter.delivery.mailings import deliver_mailing, plan_mailing
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.email.dkim import Signer, dns_record
from newsletter.errors import ConfigError
from newsletter.posts.collection import load_posts
from newsletter.store import open_store

MESSAGE = (
    b"From: News <news@example.com>\r\n"
    b"To: reader@example.org\r\n"
    b"Subject: Signed\r\n"
    b"Date: Thu, 26 Nov 2026 06:00:00 +0000\r\n"
    b"Message-ID: <signed-1@example.com>\r\n"
    b"List-Id: Sample <sample.example.com>\r\n"
    b"List-Unsubscribe: <https://news.example.com/unsubscribe/abc>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello, signed world.\r\n"
)


@pytest.fixture
def key_files(tmp_path: Path) -> tuple[Path, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "dkim.pem"
    path.write_bytes(private)
    return path, public


def stub_dns(public: bytes, name: str = "news._domainkey.example.com.") -> Any:
    record = dns_record(public).encode()

    def lookup(qname: bytes, timeout: int = 5) -> bytes | None:
        return record if qname.decode() == name else None

    return lookup


def signer(path: Path) -> Signer:
    return Signer.from_settings(
        DkimSettings(domain="example.com", selector="news", private_key_path=path)
    )


def test_signature_verifies_and_covers_the_unsubscribe_headers(
    key_files: tuple[Path, bytes],
) -> None:
    path, public = key_files
    signed = signer(path).sign(MESSAGE)
    assert signed.endswith(MESSAGE)  # the bytes sent are the bytes signed
    assert dkimpy.verify(signed, dnsfunc=stub_dns(public))
    header = signed[: len(signed) - len(MESSAGE)].decode()
    covered = re.search(r"h=([^;]+);", re.sub(r"\s+", "", header))
    assert covered is not None
    names = covered.group(1).lower().split(":")
    for required in (
        "from", "to", "subject", "date", "message-id", "list-id",
        "list-unsubscribe", "list-unsubscribe-post",
    ):  # fmt: skip
        assert required in names


def test_tampering_breaks_the_signature(key_files: tuple[Path, bytes]) -> None:
    path, public = key_files
    signed = signer(path).sign(MESSAGE)
    assert not dkimpy.verify(signed.replace(b"Subject: Signed", b"Subject: Forged"),
                             dnsfunc=stub_dns(public))  # fmt: skip
    assert not dkimpy.verify(
        signed.replace(b"List-Unsubscribe=One-Click", b"List-Unsubscribe=Nope"),
        dnsfunc=stub_dns(public),
    )
    assert not dkimpy.verify(signed.replace(b"signed world", b"forged world"),
                             dnsfunc=stub_dns(public))  # fmt: skip


def test_wrong_selector_in_dns_fails(key_files: tuple[Path, bytes]) -> None:
    path, public = key_files
    signed = signer(path).sign(MESSAGE)
    assert not dkimpy.verify(signed, dnsfunc=stub_dns(public, "other._domainkey.example.com."))


def test_bad_key_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the DKIM key"):
        signer(tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(ConfigError, match="not a PEM private key"):
        signer(junk)


def test_every_delivered_message_is_signed(
    sample_site: Path, key_files: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "dkim-secret")
    path, public = key_files
    settings = load_settings(
        sample_site / "newsletter.toml",
        {
            "database.url": f"sqlite:///{sample_site}/db.sqlite",
            "dkim.domain": "example.com",
            "dkim.selector": "news",
            "dkim.private_key_path": str(path),
        },
    )
    engine: Engine = open_store(settings)
    subs.ensure_lists(engine, settings)
    for i in range(3):
        subs.add_subscriber(engine, f"d{i}@example.org", "sample")
    mid = plan_mailing(engine, settings, "how-sleep-consolidates-memory", "sample")
    transport = MemoryTransport()
    assert deliver_mailing(engine, settings, mid, load_posts(settings), transport=transport).sent
    assert len(transport.outbox) == 3
    for sent in transport.outbox:
        assert sent.message.startswith(b"DKIM-Signature: ")
        assert dkimpy.verify(sent.message, dnsfunc=stub_dns(public))
