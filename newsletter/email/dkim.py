"""DKIM signatures (RFC 6376) over the exact bytes that are sent, with dkimpy.

dkimpy's default header list leaves out ``List-Unsubscribe-Post``; RFC 8058 §4
requires both unsubscribe headers to be covered by a valid DKIM signature for
one-click unsubscribe to be honoured, so the list here is explicit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dkim as dkimpy

from newsletter.config import DkimSettings
from newsletter.errors import ConfigError, RenderError

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


@dataclass(frozen=True)
class Signer:
    domain: str
    selector: str
    private_key: bytes  # PEM

    @classmethod
    def from_settings(cls, settings: DkimSettings) -> Signer:
        if not settings.enabled:
            raise ConfigError("[dkim] needs domain, selector and private_key_path", key="dkim")
        path = Path(str(settings.private_key_path))
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the DKIM key: {exc.strerror}", path=path, key="dkim.private_key_path"
            ) from exc
        if b"PRIVATE KEY" not in key:
            raise ConfigError("not a PEM private key", path=path, key="dkim.private_key_path")
        return cls(str(settings.domain), str(settings.selector), key)

    def sign(self, message: bytes) -> bytes:
        """The message with a DKIM-Signature header on top (the body is untouched)."""
        try:
            header = dkimpy.sign(
                message,
                self.selector.encode("ascii"),
                self.domain.encode("ascii"),
                self.private_key,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=list(SIGNED_HEADERS),
            )
        except (dkimpy.DKIMException, ValueError) as exc:
            raise RenderError(f"DKIM signing failed: {exc}", key="dkim") from exc
        return header + message


def dns_record(public_key_pem: bytes) -> str:
    """The TXT record to publish at <selector>._domainkey.<domain> for a public key."""
    body = b"".join(
        line for line in public_key_pem.splitlines() if line and not line.startswith(b"-----")
    )
    return f"v=DKIM1; k=rsa; p={body.decode('ascii')}"
