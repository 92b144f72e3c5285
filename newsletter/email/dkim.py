"""DKIM signatures (RFC 6376) over the exact bytes that are sent, with dkimpy.

Keys are RSA (``rsa-sha256``) or Ed25519 (``ed25519-sha256``, RFC 8463); the
algorithm is read from the key itself.  With a second key configured each
message carries two signatures (RFC 8463 §1: sign with both while receivers
still learn Ed25519); a receiver that knows only one ignores the other.

dkimpy's default header list leaves out ``List-Unsubscribe-Post``; RFC 8058 §4
requires both unsubscribe headers to be covered by a valid DKIM signature for
one-click unsubscribe to be honoured, so the list here is explicit.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim as dkimpy
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from newsletter.config import DkimSettings
from newsletter.errors import ConfigError, Problem, RenderError

# Every header a receiver shows or acts on.  Signing a name the message does
# not carry is allowed (RFC 6376 §5.4) and stops anyone from adding it later.
SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"mime-version",
    b"content-type",
)

# Every one listed a second time ("oversigned", RFC 6376 §8.15): the extra
# entry signs the *absence* of another instance, so a second From, Subject,
# Reply-To, Content-Type or unsubscribe header added on top of the signed one
# breaks the signature instead of being the one a mail client shows or acts
# on (replies diverted, the body read another way, under a valid signature).
OVERSIGNED: tuple[bytes, ...] = SIGNED_HEADERS

HEADERS_TO_SIGN: tuple[bytes, ...] = SIGNED_HEADERS + OVERSIGNED


# dkimpy computes RSA signatures with Python's own big-integer pow: ~7 ms a
# message here, which capped DKIM-signed sending near 100 messages/s per
# core.  RSASSA-PKCS1-v1_5 is deterministic, so OpenSSL (through
# `cryptography`) computes the very same bytes in ~0.7 ms; dkimpy calls the
# function by its module-level name, and that name is pointed at this one.
# Anything but SHA-256/SHA-1 goes to dkimpy's own code.
_PURE_PYTHON_RSA_SIGN = getattr(dkimpy, "RSASSA_PKCS1_v1_5_sign", None)
_OPENSSL_HASHES = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}


@functools.lru_cache(maxsize=16)
def _openssl_key(numbers: tuple[int, ...]) -> rsa.RSAPrivateKey:
    n, e, d, p, q, dp, dq, qinv = numbers
    return rsa.RSAPrivateNumbers(p, q, d, dp, dq, qinv, rsa.RSAPublicNumbers(e, n)).private_key()


def openssl_rsa_sign(hash_obj: Any, private_key: dict[str, int]) -> bytes:
    """dkimpy's RSASSA_PKCS1_v1_5_sign(hash, key dict), computed by OpenSSL."""
    algorithm = _OPENSSL_HASHES.get(str(getattr(hash_obj, "name", "")).lower())
    if algorithm is None and _PURE_PYTHON_RSA_SIGN is not None:
        return bytes(_PURE_PYTHON_RSA_SIGN(hash_obj, private_key))
    assert algorithm is not None
    fields = ("modulus", "publicExponent", "privateExponent", "prime1", "prime2",
              "exponent1", "exponent2", "coefficient")  # fmt: skip
    key = _openssl_key(tuple(private_key[f] for f in fields))
    return key.sign(hash_obj.digest(), padding.PKCS1v15(), Prehashed(algorithm()))


if _PURE_PYTHON_RSA_SIGN is not None:
    dkimpy.RSASSA_PKCS1_v1_5_sign = openssl_rsa_sign


@dataclass(frozen=True)
class DkimKey:
    """One selector's key, in the form dkimpy signs with."""

    selector: str
    algorithm: bytes  # b"rsa-sha256" | b"ed25519-sha256"
    private_key: bytes  # PEM for RSA, base64 of the 32-byte seed for Ed25519
    public_key: bytes  # the p= value of the DNS record (base64)

    @property
    def key_type(self) -> str:
        return "ed25519" if self.algorithm == b"ed25519-sha256" else "rsa"

    def dns_record(self) -> str:
        return f"v=DKIM1; k={self.key_type}; p={self.public_key.decode('ascii')}"


@dataclass(frozen=True)
class Signer:
    domain: str
    keys: tuple[DkimKey, ...]

    @classmethod
    def from_settings(cls, settings: DkimSettings) -> Signer:
        if not settings.enabled:
            raise ConfigError("[dkim] needs domain, selector and private_key_path", key="dkim")
        keys = [load_key(str(settings.selector), Path(str(settings.private_key_path)))]
        if settings.second_selector or settings.second_private_key_path:
            if not (settings.second_selector and settings.second_private_key_path):
                raise ConfigError(
                    "a second key needs both second_selector and second_private_key_path",
                    key="dkim.second_selector",
                )
            if settings.second_selector == settings.selector:
                raise ConfigError(
                    "the second key needs its own selector", key="dkim.second_selector"
                )
            second = Path(str(settings.second_private_key_path))
            keys.append(load_key(settings.second_selector, second, "dkim.second_private_key_path"))
        return cls(str(settings.domain), tuple(keys))

    def sign(self, message: bytes) -> bytes:
        """The message with one DKIM-Signature per key on top (the body is untouched)."""
        headers = b"".join(self._signature(key, message) for key in reversed(self.keys))
        return headers + message

    def _signature(self, key: DkimKey, message: bytes) -> bytes:
        try:
            return bytes(
                dkimpy.sign(
                    message,
                    key.selector.encode("ascii"),
                    self.domain.encode("ascii"),
                    key.private_key,
                    signature_algorithm=key.algorithm,
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=list(HEADERS_TO_SIGN),
                )
            )
        except (dkimpy.DKIMException, ValueError) as exc:
            raise RenderError(
                f"DKIM signing with selector {key.selector!r} failed: {exc}", key="dkim"
            ) from exc

    def records(self) -> Iterator[tuple[str, str]]:
        """(DNS name, TXT value) to publish for each selector."""
        for key in self.keys:
            yield f"{key.selector}._domainkey.{self.domain}", key.dns_record()


def load_key(selector: str, path: Path, config_key: str = "dkim.private_key_path") -> DkimKey:
    """Read a PEM private key (RSA or Ed25519, PKCS#1/PKCS#8) or a dkimpy-style
    Ed25519 key file (the base64 of the 32-byte seed, as `dknewkey` writes)."""

    def bad(message: str) -> ConfigError:
        return ConfigError(message, path=path, key=config_key)

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the DKIM key: {exc.strerror}", path=path, key=config_key
        ) from exc
    if b"PRIVATE KEY" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise bad(f"cannot load the PEM private key: {exc}") from exc
    else:
        try:
            seed = base64.b64decode(data.strip(), validate=True)
        except ValueError:
            seed = b""
        if len(seed) != 32:
            raise bad("not a PEM private key (nor a base64 Ed25519 seed)")
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    return _dkim_key(selector, key, bad)


def _dkim_key(selector: str, key: object, bad: Callable[[str], ConfigError]) -> DkimKey:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:  # RFC 8301 §3.2: verifiers must not accept less
            raise bad(f"an RSA key of {key.key_size} bits is too short (2048 is usual)")
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return DkimKey(selector, b"rsa-sha256", pem, base64.b64encode(der))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        # RFC 8463 §4.2: p= is the bare 32-byte public key, base64.
        return DkimKey(
            selector, b"ed25519-sha256", base64.b64encode(seed), base64.b64encode(public)
        )
    raise bad(f"unsupported key type {type(key).__name__}: DKIM keys are RSA or Ed25519")


def dns_record(public_key_pem: bytes) -> str:
    """The TXT record to publish for an RSA public key in PEM."""
    body = b"".join(
        line for line in public_key_pem.splitlines() if line and not line.startswith(b"-----")
    )
    return f"v=DKIM1; k=rsa; p={body.decode('ascii')}"


_PROBE = (
    b"From: check@example.com\r\nTo: check@example.com\r\nSubject: DKIM check\r\n"
    b"Date: Thu, 26 Nov 2026 06:00:00 +0000\r\nMessage-ID: <dkim-check@example.com>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nprobe\r\n"
)


def check(settings: DkimSettings) -> tuple[list[tuple[str, str]], list[Problem]]:
    """Load every key, sign a probe and verify it against the key's own record.

    Returns the records to publish (name, value) and the problems found; a
    key that cannot sign is an error here rather than at every send.
    """
    if not settings.enabled:
        if settings.domain or settings.selector or settings.private_key_path:
            return [], [Problem("[dkim] needs domain, selector and private_key_path", key="dkim")]
        return [], []
    try:
        signer = Signer.from_settings(settings)
    except ConfigError as exc:
        return [], [Problem.from_error(exc)]
    records = list(signer.records())
    table = {f"{name}.".encode(): value.encode() for name, value in records}
    problems: list[Problem] = []
    for key in signer.keys:
        try:
            signed = Signer(signer.domain, (key,)).sign(_PROBE)
        except RenderError as exc:
            problems.append(Problem.from_error(exc))
            continue
        if not dkimpy.verify(signed, dnsfunc=lambda name, timeout=5: table.get(name)):
            problems.append(
                Problem(
                    f"a test signature with selector {key.selector!r} does not verify", key="dkim"
                )
            )
    return records, problems
