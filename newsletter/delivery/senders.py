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
  or a message of this mailing recorded sent before (`taken`).  A server
  refusing the `[bounces]` address in general has accepted none, so nobody's
  attempts are spent before the owner fixes it (but see below).

Evidence from the ledger, not only from this pass, because the recipient left
alone at the end of a mailing is refused on a pass that accepts nothing.  The
cost: a server that takes our senders and then refuses them all (the account
suspended mid-mailing) spends one attempt of at most `STOP_AFTER` +
concurrency recipients per pass before `STOP_AFTER` refusals in a row stop
it, as they still do.

A sender the server never took (no message of the mailing accepted, in this
pass or before) is likely our configuration.  With `STOP_AFTER` or more
recipients left the stop says so and nobody's attempt is spent.  With fewer
(a list of one, a mailing's last two) no `STOP_AFTER` refusals in a row can
come: each pass deferred them without an attempt and without a word, and the
mailing stayed deferred for ever.  Sparing attempts protects the rest of a
list while the owner fixes the sender; here there is no rest to protect.  So
such a refusal spends its recipient's attempt (failed after `max_attempts`,
like any other), and every pass whose sender refusals met no accepted message
stops at its end as `STOP_AFTER` would (`unanswered`), naming the sender and
the server's reply, which the mailing keeps as its last error, also once it
is over.  (A server that took our sender before and refuses it now, the
account suspended, spends nothing: its pass says so, and the rows wait for
the owner.)  The ledger is read for this only at a pass's first sender
refusal.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

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

    `per_recipient`: VERP is on (an envelope sender per delivery).  `ledger`:
    whether a message of the mailing was sent before, and how many
    recipients it has left, counted up to `STOP_AFTER` (read once, at the
    pass's first sender refusal; see the module's docstring).
    """

    def __init__(
        self,
        *,
        per_recipient: bool = False,
        ledger: Callable[[], tuple[bool, int]] = lambda: (False, STOP_AFTER),
    ) -> None:
        self._lock = threading.Lock()
        self._in_a_row = 0
        self._last: tuple[SendResult, str] | None = None
        self._ledger = ledger
        self._read: tuple[bool, int] | None = None
        self.per_recipient = per_recipient
        self.accepted = False  # a message of this pass was accepted
        self.spent = False  # a refusal spent its recipient's attempt: few were left

    def note(self, result: SendResult, sender: str = "") -> bool:
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
            self._last = (result, sender)
            return self._in_a_row >= STOP_AFTER

    def taken(self) -> bool:
        """Whether the server has taken one of our senders for this mailing."""
        return self.accepted or self._history()[0]

    def _history(self) -> tuple[bool, int]:
        if self._read is None:
            self._read = self._ledger()
        return self._read

    def spends_attempt(self, result: SendResult) -> bool:
        """Whether this sender refusal spends its recipient's attempt: it is the
        recipient's own (VERP, the server took our others), or a sender never
        taken with fewer recipients left than `STOP_AFTER` (see above)."""
        if not refuses_sender(result):
            return False
        if self.taken():
            return self.per_recipient
        if self._history()[1] < STOP_AFTER:
            self.spent = True
        return self.spent

    def error(self) -> TransportError:
        """What stops the pass: the last refusal, its sender, what to check."""
        with self._lock:
            assert self._last is not None
            result, sender = self._last
        return refused_sender_error(result, sender, spent=self.spent)

    def unanswered(self) -> TransportError | None:
        """`error()` when this pass ends on sender refusals and accepted no
        message, unless they were VERP recipients' own: the pass stops as
        after `STOP_AFTER` of them."""
        if self.accepted or not self._in_a_row or (self.per_recipient and self.taken()):
            return None
        return self.error()


def refused_sender_error(result: SendResult, sender: str, *, spent: bool = False) -> TransportError:
    """What stops the pass: the server's words, and what to check.  `spent`:
    the refusals spent their recipients' attempts (fewer left than `STOP_AFTER`)."""
    rest = (
        "with so few recipients left, each refusal spends one of their "
        "[delivery] max_attempts, then they are failed"
        if spent
        else "the rest of the mailing stays queued"
    )
    return TransportError(
        f"the SMTP server refuses the envelope sender <{sender}>: "
        f"{result.code} {result.text}".rstrip()
        + "; check [email] from (or the [bounces] address, which is the envelope sender "
        f"when set) against what the account may send as; {rest}"
    )
