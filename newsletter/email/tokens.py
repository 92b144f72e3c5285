"""Unsubscribe tokens: HMAC-SHA256 over (subscriber, list), URL-safe.

A token is `<subscriber uid>\0<list name>\0<mac>` in URL-safe base64; the uid
is the subscriber's random identifier (never the sequential row id), and the
MAC is checked in constant time.  The secret comes from the environment variable `[unsubscribe]
secret_env` names; when that is unset, one is generated once per deployment and
kept in the database (with a warning), so links keep working across restarts
and hosts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from newsletter.config import Settings
from newsletter.errors import ConfigError, StoreError, database_reason

# SQLAlchemy and the store are imported where the database is used: making
# and checking tokens (a preview, `render`) needs neither.
if TYPE_CHECKING:
    from sqlalchemy import Engine

log = logging.getLogger(__name__)

_MAC_BYTES = 16  # 128 bits: ample against forgery, keeps URLs short
ALL_LISTS = "*"  # token scope meaning "every list"
SECRET_KEY = "unsubscribe.secret"  # its row in the state table
# What make_token writes: the URL-safe alphabet, no padding.  A token longer
# than this is never ours (uid, a list name of 100 characters, MAC, encoded).
_SPELLING = re.compile(r"[A-Za-z0-9_-]{1,1000}")


@dataclass(frozen=True)
class TokenClaim:
    subscriber_uid: str
    list_name: str  # ALL_LISTS for a global unsubscribe


def load_secret(settings: Settings, engine: Engine | None = None) -> bytes:
    """The HMAC key: from the environment, else one per deployment kept in the database.

    Every host, `send` and `serve` sharing the database agree on it.  A secret
    an older version generated into the state folder is moved into the
    database the first time (so its links keep working).
    """
    env_value = os.environ.get(settings.unsubscribe.secret_env)
    if env_value:
        return env_value.encode("utf-8")
    from newsletter.store import open_store, shared_value

    path = settings.state_dir / "secret"
    existing = path.read_bytes().strip() if path.exists() else None
    candidate = existing or secrets.token_urlsafe(32).encode("ascii")
    bind = engine if engine is not None else open_store(settings)
    value = shared_value(bind, SECRET_KEY, candidate.decode("ascii")).encode("ascii")
    if existing is None and value == candidate:
        log.warning(
            "%s is not set; generated an unsubscribe secret in the database (keep it, or links break)",
            settings.unsubscribe.secret_env,
        )
    return value


FINGERPRINT_KEY = "unsubscribe.secret-fingerprint"


def secret_fingerprint(secret: bytes) -> str:
    """An HMAC of a fixed string under the secret: it identifies the secret and
    reveals nothing of it (storing it beside the subscribers is safe)."""
    return hmac.new(
        secret, b"newsletter unsubscribe secret fingerprint", hashlib.sha256
    ).hexdigest()


def checked_secret(settings: Settings, engine: Engine) -> bytes:
    """`load_secret`, refused (ConfigError) when it is not the secret this database
    has used before: a changed `.newsletter/secret`, or the variable unset in one
    shell, would otherwise silently break every link already sent.  The first
    use records the fingerprint."""
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError, SQLAlchemyError

    from newsletter.store import now, reading
    from newsletter.store.schema import state

    secret = load_secret(settings, engine)
    fingerprint = secret_fingerprint(secret)
    query = select(state.c.value).where(state.c.key == FINGERPRINT_KEY)
    try:
        with reading(engine) as conn:  # no write lock for the usual case
            stored = conn.scalar(query)
        if stored is None:
            with engine.begin() as conn:
                conn.execute(
                    state.insert().values(key=FINGERPRINT_KEY, value=fingerprint, updated_at=now())
                )
            return secret
    except IntegrityError:  # another process recorded one first: compare with that
        return checked_secret(settings, engine)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot check the unsubscribe secret: {database_reason(exc)}") from exc
    if not hmac.compare_digest(stored, fingerprint):
        env = settings.unsubscribe.secret_env
        source = f"${env}" if os.environ.get(env) else f"the database ({env} unset)"
        raise ConfigError(
            f"the unsubscribe secret from {source} is not the one this database's links were "
            f"made with; every unsubscribe link already sent would break. Use the earlier "
            f"secret (set {env} as before, or restore that file)",
            key="unsubscribe.secret_env",
        )
    return secret


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, b"unsubscribe\0" + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def make_token(secret: bytes, subscriber_uid: str, list_name: str) -> str:
    payload = f"{subscriber_uid}\0{list_name}".encode()
    raw = payload + b"\0" + _mac(secret, payload)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def verify_token(secret: bytes, token: str) -> TokenClaim | None:
    """The claim inside a genuine token; None for anything forged or damaged."""
    raw = decode_strictly(token)
    if raw is None or len(raw) <= _MAC_BYTES + 1:
        return None
    payload, sep, mac = (
        raw[: -_MAC_BYTES - 1],
        raw[-_MAC_BYTES - 1 : -_MAC_BYTES],
        raw[-_MAC_BYTES:],
    )
    if sep != b"\0" or not hmac.compare_digest(mac, _mac(secret, payload)):
        return None
    try:
        uid, list_name = payload.decode("utf-8").split("\0", 1)
        return TokenClaim(uid, list_name)
    except (UnicodeDecodeError, ValueError):
        return None


def decode_strictly(token: str) -> bytes | None:
    """The bytes of a token spelled exactly as `make_token` spells them.

    `urlsafe_b64decode` skips characters outside the alphabet, accepts extra
    padding, the standard alphabet's `+/` and unused low bits in the last
    character, so many strings decode to one token.  One token, one spelling:
    decode, encode again, and compare.
    """
    if not _SPELLING.fullmatch(token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        return None
    return raw


def unsubscribe_url(settings: Settings, token: str) -> str:
    return f"{settings.web.public_base}/unsubscribe/{token}"
