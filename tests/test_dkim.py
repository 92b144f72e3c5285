"""DKIM: sign the exact bytes sent; verify with dkimpy against a stub DNS."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from smtpserver import SmtpTestServer
from sqlalchemy import Engine

from newsletter.audience import members as subs
from newsletter.config import DkimSettings, load_settings
from newsletter.delivery.mailings import deliver_mailing, plan_mailing
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.email.dkim import SIGNED_HEADERS, Signer, dns_record
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


# --------------------------------------------------------------------------- Ed25519, dual, oversigning


def ed25519_pem(tmp_path: Path, name: str = "ed.pem") -> Path:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / name
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def dual_signer(rsa_path: Path, ed_path: Path) -> Signer:
    return Signer.from_settings(
        DkimSettings(
            domain="example.com",
            selector="news",
            private_key_path=rsa_path,
            second_selector="ed",
            second_private_key_path=ed_path,
        )
    )


def published(signer: Signer) -> Any:
    """A stub DNS holding exactly the records `check` tells the user to publish."""
    table = {f"{name}.".encode(): value.encode() for name, value in signer.records()}

    def lookup(qname: bytes, timeout: int = 5) -> bytes | None:
        return table.get(qname)

    return lookup


def signatures(message: bytes) -> list[dict[str, str]]:
    head = message.split(b"\r\n\r\n", 1)[0].decode()
    found = []
    for raw in re.findall(r"^DKIM-Signature:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head, re.MULTILINE):
        tags = dict(
            part.split("=", 1) for part in re.sub(r"\s+", "", raw).split(";") if "=" in part
        )
        found.append(tags)
    return found


def verify_all(message: bytes, dns: Any) -> list[bool]:
    return [
        dkimpy.DKIM(message).verify(idx=i, dnsfunc=dns) for i in range(len(signatures(message)))
    ]


def test_an_ed25519_key_signs_and_verifies(tmp_path: Path) -> None:
    # Reported: an Ed25519 key passed `check`, then every send failed with
    # "Unparsable private key" (the PEM went to dkimpy as if it were RSA).
    ed = Signer.from_settings(
        DkimSettings(domain="example.com", selector="ed", private_key_path=ed25519_pem(tmp_path))
    )
    signed = ed.sign(MESSAGE)
    assert signed.endswith(MESSAGE)
    (tags,) = signatures(signed)
    assert tags["a"] == "ed25519-sha256" and tags["s"] == "ed"
    ((name, record),) = ed.records()
    assert name == "ed._domainkey.example.com"
    assert record.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(record.split("p=")[1])) == 32  # RFC 8463: the bare key
    assert dkimpy.verify(signed, dnsfunc=published(ed))
    assert not dkimpy.verify(
        signed.replace(b"signed world", b"forged world"), dnsfunc=published(ed)
    )


def test_a_dkimpy_style_base64_seed_file_is_accepted(tmp_path: Path) -> None:
    seed = tmp_path / "ed.key"
    seed.write_bytes(base64.b64encode(bytes(range(32))) + b"\n")  # as `dknewkey` writes it
    ed = Signer.from_settings(
        DkimSettings(domain="example.com", selector="ed", private_key_path=seed)
    )
    assert dkimpy.verify(ed.sign(MESSAGE), dnsfunc=published(ed))


def test_dual_signing_carries_two_signatures_that_each_verify(
    tmp_path: Path, key_files: tuple[Path, bytes]
) -> None:
    both = dual_signer(key_files[0], ed25519_pem(tmp_path))
    signed = both.sign(MESSAGE)
    assert signed.endswith(MESSAGE)
    assert sorted(t["a"] for t in signatures(signed)) == ["ed25519-sha256", "rsa-sha256"]
    assert verify_all(signed, published(both)) == [True, True]
    # Each one on its own: publishing only the RSA record leaves the Ed25519 one failing.
    rsa_only = Signer(both.domain, both.keys[:1])
    assert sorted(verify_all(signed, published(rsa_only))) == [False, True]


@pytest.mark.parametrize(
    "added",
    [
        b"Subject: Forged on top\r\n",
        b"From: Mallory <mallory@example.net>\r\n",
        b"List-Unsubscribe: <https://evil.example.net/u>\r\n",
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
        # Replies diverted, or the body read another way, under a valid signature.
        b"Reply-To: Mallory <mallory@example.net>\r\n",
        b"To: everyone@example.net\r\n",
        b"Content-Type: text/html; charset=utf-8\r\n",
        b"MIME-Version: 1.0\r\n",
        b"Date: Fri, 01 Jan 2027 00:00:00 +0000\r\n",
        b"Message-ID: <forged@example.net>\r\n",
        b"List-Id: Forged <forged.example.net>\r\n",
    ],
    ids=lambda added: added.split(b":")[0].decode().lower(),
)
def test_a_header_added_on_top_breaks_both_signatures(
    tmp_path: Path, key_files: tuple[Path, bytes], added: bytes
) -> None:
    both = dual_signer(key_files[0], ed25519_pem(tmp_path))
    signed = both.sign(MESSAGE)
    for tags in signatures(signed):
        names = tags["h"].lower().split(":")
        for oversigned in SIGNED_HEADERS:
            assert names.count(oversigned.decode()) == 2, (oversigned, names)
    assert verify_all(signed, published(both)) == [True, True]
    # Inserted below the signatures, above the signed headers: what a
    # forwarder or attacker would do to change what the reader sees.
    cut = signed.index(b"From: News")
    tampered = signed[:cut] + added + signed[cut:]
    assert verify_all(tampered, published(both)) == [False, False]


def test_second_key_settings_are_checked(tmp_path: Path, key_files: tuple[Path, bytes]) -> None:
    with pytest.raises(ConfigError, match="needs both second_selector"):
        Signer.from_settings(
            DkimSettings(
                domain="example.com", selector="news", private_key_path=key_files[0],
                second_selector="ed",
            )
        )  # fmt: skip
    with pytest.raises(ConfigError, match="its own selector"):
        dual_signer(key_files[0], ed25519_pem(tmp_path)).__class__.from_settings(
            DkimSettings(
                domain="example.com", selector="news", private_key_path=key_files[0],
                second_selector="news", second_private_key_path=ed25519_pem(tmp_path),
            )
        )  # fmt: skip
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="RSA or Ed25519"):
        signer(ec_key)


def test_mail_received_by_a_real_smtp_server_verifies_with_both_algorithms(
    sample_site: Path,
    smtp_server: SmtpTestServer,
    tmp_path: Path,
    key_files: tuple[Path, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "dkim-secret")
    ed_path = ed25519_pem(tmp_path)
    settings = load_settings(
        sample_site / "newsletter.toml",
        {
            "database.url": f"sqlite:///{sample_site}/db.sqlite",
            "dkim.domain": "example.com",
            "dkim.selector": "news",
            "dkim.private_key_path": str(key_files[0]),
            "dkim.second_selector": "ed",
            "dkim.second_private_key_path": str(ed_path),
            **smtp_server.settings_overrides(),
        },
    )
    engine: Engine = open_store(settings)
    subs.ensure_lists(engine, settings)
    for i in range(3):
        subs.add_subscriber(engine, f"d{i}@example.org", "sample", name=f"Réader {i}")
    mid = plan_mailing(engine, settings, "how-sleep-consolidates-memory", "sample")
    assert deliver_mailing(engine, settings, mid, load_posts(settings)).sent == 3
    dns = published(dual_signer(key_files[0], ed_path))
    assert len(smtp_server.received) == 3
    for received in smtp_server.received:
        data = received.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        assert sorted(t["a"] for t in signatures(data)) == ["ed25519-sha256", "rsa-sha256"]
        assert verify_all(data, dns) == [True, True]


def test_check_test_signs_and_prints_the_record_per_selector(
    sample_site: Path, tmp_path: Path, key_files: tuple[Path, bytes]
) -> None:
    from click.testing import CliRunner

    from newsletter.cli import main

    ed_path = ed25519_pem(tmp_path)
    config = sample_site / "newsletter.toml"
    config.write_text(
        config.read_text()
        + f'\n[dkim]\ndomain = "example.com"\nselector = "news"\nprivate_key_path = "{key_files[0]}"\n'
        + f'second_selector = "ed"\nsecond_private_key_path = "{ed_path}"\n'
    )
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 0, result.output
    rsa_line = next(line for line in result.output.splitlines() if "news._domainkey" in line)
    ed_line = next(line for line in result.output.splitlines() if "ed._domainkey" in line)
    assert 'publish TXT at news._domainkey.example.com: "v=DKIM1; k=rsa; p=' in rsa_line
    assert 'publish TXT at ed._domainkey.example.com: "v=DKIM1; k=ed25519; p=' in ed_line
    ed_path.write_text("not a key")  # a broken key is an error now, not at every send
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 1
    assert "dkim.second_private_key_path" in result.output
    assert "not a PEM private key" in result.output


# --------------------------------------------------------------------------- OpenSSL for RSA


@pytest.mark.parametrize("bits", [1024, 2048])
def test_openssl_rsa_signatures_are_dkimpys_bytes(bits: int) -> None:
    import hashlib

    from dkim.crypto import RSASSA_PKCS1_v1_5_sign as pure_python
    from dkim.crypto import parse_pem_private_key

    from newsletter.email import dkim as ours

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    parsed = parse_pem_private_key(pem)
    assert dkimpy.RSASSA_PKCS1_v1_5_sign is ours.openssl_rsa_sign  # what dkimpy.sign calls
    for name in ("sha256", "sha1"):
        for data in (b"", b"headers", bytes(range(256)) * 40):
            expected = pure_python(hashlib.new(name, data), parsed)
            assert ours.openssl_rsa_sign(hashlib.new(name, data), parsed) == expected
    # Any other algorithm goes to dkimpy's own code, which refuses it alike.
    with pytest.raises(KeyError):
        pure_python(hashlib.new("sha512", b"x"), parsed)
    with pytest.raises(KeyError):
        ours.openssl_rsa_sign(hashlib.new("sha512", b"x"), parsed)
