"""A server that refuses the envelope sender refuses the mailing, not the recipient.

A 5xx to MAIL FROM (550 or 553 "sender address rejected", 554, 530
"authentication required", 555 "parameters not recognised") says nothing of
the recipient it came with: it is about the account or `[email] from`, e.g. a
provider that accepts only the login's own address.  Each such refusal failed
its recipient for good, so a misconfigured first `send` marked a whole list
failed in one pass.  Now it defers its recipient without spending an attempt
(so passes before the fix cannot use up theirs), and `STOP_AFTER` of them with no message accepted in
between stop the pass with the server's words: the rest stays queued for the
pass after the fix.  (552 to MAIL is the message's size, SIZE=: still that
message's own failure.)

One exception: with VERP (`[bounces] address`) every delivery has an
envelope sender of its own, and a server may refuse ONE of them while taking
the others (a local part it finds too long or suspicious, a token matching a
pattern of its blocklist).  Deferred without an attempt, that recipient would
stay deferred for ever, pass after pass.  So a sender refusal spends an
attempt, and ends failed after the usual `max_attempts`, when both hold:

- VERP is on: without it the sender is one address for every recipient, sent
  before the server knows any recipient, so its refusal cannot be about one
  of them (a later refusal of an address accepted before is the account's
  state: a quota, a suspension), and
- the server has taken one of our (other) senders: a message of this pass,
  or a message of this mailing recorded sent before the pass started
  (`accepted`).  A server refusing the `[bounces]` address in general has
  accepted none, so nobody's attempts are spent before the owner fixes it.

Evidence from the ledger, not only from this pass, because the recipient left
alone at the end of a mailing is refused on a pass that accepts nothing.  The
cost: a server that takes our senders and then refuses them all (the account
suspended mid-mailing) spends one attempt of at most `STOP_AFTER` +
concurrency recipients per pass before `STOP_AFTER` refusals in a row stop
it, as they still do.
"""

from __future__ import annotations

import threading

from newsletter.delivery.transports import SendResult
from newsletter.errors import TransportError

__all__ = ["STOP_AFTER", "SenderRefusals", "refused_sender_error", "refuses_sender"]

STOP_AFTER = 3  # sender refusals in a row, across connections, that stop the pass


def refuses_sender(result: SendResult) -> bool:
    """A permanent refusal of MAIL FROM, other than the message's size."""
    code = result.code
    return (
        not result.ok
        and result.stage == "mail"
        and code is not None
        and 500 <= code < 600
        and code != 552
    )


class SenderRefusals:
    """Counts sender refusals in a row (thread-safe: every connection reports here).

    `per_recipient`: VERP is on (an envelope sender per delivery); `accepted`:
    the server has taken one of our senders for this mailing (see the module's
    docstring), set again by every message accepted in this pass.
    """

    def __init__(self, *, per_recipient: bool = False, accepted: bool = False) -> None:
        self._lock = threading.Lock()
        self._in_a_row = 0
        self.per_recipient = per_recipient
        self.accepted = accepted

    def note(self, result: SendResult) -> bool:
        """True once `STOP_AFTER` sender refusals came in a row: stop the pass."""
        if result.ok:
            self.accepted = True  # a plain store: no lock for the common case
            if self._in_a_row:  # read without the lock: the common case costs nothing
                with self._lock:
                    self._in_a_row = 0
            return False
        if not refuses_sender(result):
            return False
        with self._lock:
            self._in_a_row += 1
            return self._in_a_row >= STOP_AFTER

    def spends_attempt(self, result: SendResult) -> bool:
        """Whether this sender refusal is its recipient's own (VERP, see above)."""
        return self.per_recipient and self.accepted and refuses_sender(result)


def refused_sender_error(result: SendResult, sender: str) -> TransportError:
    """What stops the pass: the server's words, and what to check."""
    return TransportError(
        f"the SMTP server refuses the envelope sender <{sender}>: "
        f"{result.code} {result.text}".rstrip()
        + "; check [email] from (or the [bounces] address, which is the envelope sender "
        "when set) against what the account may send as; the rest of the mailing stays queued"
    )
