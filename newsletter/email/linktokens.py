"""Signed links for readers: confirm a signup, manage preferences.

Both follow the unsubscribe tokens' rules (`tokens`): HMAC-SHA256 with the
same secret, a purpose string mixed into the MAC so one kind of token never
passes for another, URL-safe base64 without padding, strict decoding (a token
that does not re-encode to itself is refused, so there is exactly one
spelling of each) and constant-time comparison.

* A confirm token names a row of `confirmations` (its random nonce) and when
  it expires; the row makes it single-use.  `[signup] confirm_hours`.
* A preferences token names a subscriber's random uid, like an unsubscribe
  token for every list; it does not expire (it sits in every email's footer).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from newsletter.config import Settings
from newsletter.email.tokens import decode_strictly

_MAC_BYTES = 16
_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,300}")
_UID = re.compile(r"[0-9a-f]{32}")
CONFIRM = b"confirm"
PREFERENCES = b"preferences"


@dataclass(frozen=True)
class ConfirmClaim:
    nonce: str
    expires_at: datetime

    def expired(self, at: datetime) -> bool:
        return at >= self.expires_at


def _mac(secret: bytes, purpose: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, purpose + b"\0" + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def _encode(secret: bytes, purpose: bytes, payload: bytes) -> str:
    raw = payload + _mac(secret, purpose, payload)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode(secret: bytes, purpose: bytes, token: str) -> bytes | None:
    """The payload of a genuine token of this purpose; None for anything else."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        return None
    raw = decode_strictly(token)  # one token, one spelling
    if raw is None:
        return None
    payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, _mac(secret, purpose, payload)):
        return None
    return payload


def make_confirm_token(secret: bytes, nonce: str, expires_at: datetime) -> str:
    payload = f"{nonce}\0{int(expires_at.timestamp())}".encode("ascii")
    return _encode(secret, CONFIRM, payload)


def verify_confirm_token(secret: bytes, token: str) -> ConfirmClaim | None:
    payload = _decode(secret, CONFIRM, token)
    if payload is None:
        return None
    try:
        nonce, stamp = payload.decode("ascii").split("\0")
        if not _UID.fullmatch(nonce) or not stamp.isdigit():
            return None
        return ConfirmClaim(nonce, datetime.fromtimestamp(int(stamp), UTC))
    except (UnicodeDecodeError, ValueError, OverflowError):
        return None


def make_preferences_token(secret: bytes, subscriber_uid: str) -> str:
    return _encode(secret, PREFERENCES, subscriber_uid.encode("ascii"))


def verify_preferences_token(secret: bytes, token: str) -> str | None:
    """The subscriber uid inside a genuine preferences token."""
    payload = _decode(secret, PREFERENCES, token)
    if payload is None:
        return None
    try:
        uid = payload.decode("ascii")
    except UnicodeDecodeError:
        return None
    return uid if _UID.fullmatch(uid) else None


def confirm_url(settings: Settings, token: str) -> str:
    return f"{settings.web.public_base}/confirm/{token}"


def preferences_url(settings: Settings, token: str) -> str:
    return f"{settings.web.public_base}/preferences/{token}"
