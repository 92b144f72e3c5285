"""Message-IDs that name their delivery, signed: nothing to store, nothing to index.

A delivery's Message-ID is ``<{mailing}.{masked}.{tag}@{domain}>``: the
mailing it went out in, the delivery's ledger id XORed with a 64-bit pad of
that mailing (an HMAC of it), and a tag, the first 80 bits of an HMAC-SHA256
of mailing and delivery under the unsubscribe secret (the key the VERP
tokens and the unsubscribe links use), in lower-case hex (base32, as
VERP's, cost 1.4 µs more a message: measured with timeit).  The pad: a
delivery's id is its ledger key times 2**32 plus the subscriber's id, and a
reader should not learn from a header which number of subscriber they are
(how big the list is) nor their id in the store.

Why: the Message-ID used to be a hash stored in ``deliveries.message_id``
(indexed, so that a bounce quoting it could be matched), which made every
recorded outcome move one more index, 10-20 µs of the ~50 µs commit behind
each message (docs/delivery.md, "Why not at C = 1").  A Message-ID that
names its delivery is matched by parsing it: no column, no index.  The tag
keeps it unguessable, so a forged report cannot name somebody's delivery
(as for VERP, `bounces.verify_verp`).

Stable per (mailing, subscriber) (invariant 2): a delivery's id is one per
(mailing's ledger key, subscriber), so every attempt of it carries the same
Message-ID (RFC 5322 §3.6.4: the same message, the same identifier).  A row
moved to another mailing (a digest re-planned, a deduplicated post handed
to another list) is a different message there, and gets a new one.  A row
that recorded a Message-ID before (older versions stored every one) keeps
using it (`MessageContext`), and bounces of those are matched through the
index, as before.
"""

from __future__ import annotations

import functools
import hmac
import re

_TAG_BYTES = 10  # 80 bits, as the VERP tokens
_PURPOSE = b"message-id\0"
_PAD_PURPOSE = b"message-id pad\0"
_PAD_BYTES = 8  # a delivery id is below 2**63
# Lower case on the way in: a Message-ID is case-sensitive, but a report
# may come back through software that folds it; digits and lower-case hex
# survive that.
_FORM = re.compile(r"<?(\d{1,10})\.(\d{1,20})\.([0-9a-f]{20})@[^<>\s]+>?")


def _keyed(secret: bytes) -> hmac.HMAC:
    # A digest name, not hashlib.sha256: OpenSSL's HMAC, whose copy is cheap.
    return hmac.new(secret, _PURPOSE, "sha256")


# Per (secret, mailing): bounces arrive by the hundred for one mailing, and
# `delivery_of` made its pad again for each.  Small: a pad is an int, and a
# bounce run touches a few recent mailings.
@functools.lru_cache(maxsize=256)
def _pad(secret: bytes, mailing_id: int) -> int:
    mac = hmac.digest(secret, _PAD_PURPOSE + str(mailing_id).encode("ascii"), "sha256")
    return int.from_bytes(mac[:_PAD_BYTES], "big")


def _tag(keyed: hmac.HMAC, mailing_id: int, delivery_id: int) -> str:
    mac = keyed.copy()
    mac.update(f"{mailing_id}.{delivery_id}".encode("ascii"))
    return mac.digest()[:_TAG_BYTES].hex()


class MessageIds:
    """The Message-IDs of one mailing's deliveries (the keyed HMAC set up once)."""

    def __init__(self, secret: bytes, mailing_id: int, domain: str) -> None:
        self.keyed = _keyed(secret)
        self.pad = _pad(secret, mailing_id)
        self.mailing_id = mailing_id
        self.domain = domain

    def __call__(self, delivery_id: int) -> str:
        tag = _tag(self.keyed, self.mailing_id, delivery_id)
        return f"<{self.mailing_id}.{delivery_id ^ self.pad}.{tag}@{self.domain}>"


def message_id_for(secret: bytes, mailing_id: int, delivery_id: int, domain: str) -> str:
    """The Message-ID of one delivery (see `MessageIds` for many)."""
    return MessageIds(secret, mailing_id, domain)(delivery_id)


def delivery_of(secret: bytes, message_id: str) -> tuple[int, int] | None:
    """(mailing id, delivery id) named by a genuine Message-ID of ours; None for
    anything else (another form, another secret, an altered number or tag)."""
    match = _FORM.fullmatch(message_id.strip().lower())
    if match is None:
        return None
    mailing_id = int(match.group(1))
    delivery_id = int(match.group(2)) ^ _pad(secret, mailing_id)
    keyed = _keyed(secret)
    if not hmac.compare_digest(match.group(3), _tag(keyed, mailing_id, delivery_id)):
        return None
    return mailing_id, delivery_id
