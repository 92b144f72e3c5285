"""Report texts that real servers (and auto-responders) send, read by `parse_report`.

Each text here once read wrong: a status code taken from an IP address, an
auto-reply taken for a qmail bounce, an RFC 3464 comment, an unknown charset,
a DSN without its per-message block.  No store needed: parsing is pure.
"""

from __future__ import annotations

from string import Template

import pytest

from newsletter.delivery.bounces import UnparseableReport, parse_report

VERP = "bounces+d7-abcdefghijklmnop@example.com"


def report(text: str, **values: str) -> bytes:
    """A report's text (``$verp``, ``$rcpt`` filled in) as the bytes a mailbox holds."""
    filled = Template(text.lstrip("\n")).substitute(
        {"verp": VERP, "rcpt": "r0@example.org"} | values
    )
    return filled.replace("\n", "\r\n").encode("utf-8")


EXIM_BEHIND_AN_IP = """
Return-path: <>
Envelope-to: $verp
From: Mail Delivery System <Mailer-Daemon@mx.example.net>
To: $verp
Subject: Mail delivery failed: returning message to sender
Message-Id: <exim-ip@mx.example.net>
X-Failed-Recipients: $rcpt
Auto-Submitted: auto-replied
Content-Type: text/plain; charset=us-ascii

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  $rcpt
    host mx.example.org [10.4.5.6]
    SMTP error from remote mail server after RCPT TO:<$rcpt>:
    550 5.1.1 <$rcpt>... User unknown
"""

DSN_IP_IN_DIAGNOSTIC = """
From: MAILER-DAEMON@mx.example.net
To: $verp
Subject: Undelivered Mail Returned to Sender
Message-ID: <ip-dsn@mx.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

Your message could not be delivered.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; $rcpt
Action: failed
Diagnostic-Code: X-Postfix; host mx.example.org[10.4.5.6] said: 550 5.1.1
    <$rcpt>: Recipient address rejected: User unknown

--B--
"""

QMAIL_BEHIND_AN_IP = """
From: MAILER-DAEMON@mx.example.net
To: $verp
Subject: failure notice
Message-ID: <qmail-ip@mx.example.net>
Content-Type: text/plain

Hi. This is the qmail-send program at mx.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<$rcpt>:
10.0.2.250 does not like recipient.
Remote host said: 550 No such mailbox
Giving up on 10.0.2.250.
"""


def test_a_status_code_is_never_read_out_of_an_ip_address() -> None:
    # "4.5.6" inside 10.4.5.6 was taken for the status: a hard bounce counted soft.
    for text, shape in ((EXIM_BEHIND_AN_IP, "exim"), (DSN_IP_IN_DIAGNOSTIC, "dsn")):
        (event,) = parse_report(report(text)).events
        assert (event.kind, event.status, event.email) == ("hard", "5.1.1", "r0@example.org")
        assert parse_report(report(text)).shape == shape
    # Nor an SMTP reply code out of one ("250 " in 10.0.2.250 read as a success).
    (event,) = parse_report(report(QMAIL_BEHIND_AN_IP)).events
    assert (event.kind, event.status) == ("hard", "5.0.0")


HELPDESK_AUTO_REPLY = """
From: Helpdesk <helpdesk@example.org>
To: $verp
Subject: Automatic reply
Message-ID: <auto-1@example.org>
${marker}
Content-Type: text/plain

Thank you for writing to us. If our portal shows you a permanent error,
write to the address below and we will look into it:

<helpdesk@example.org>:
we answer within two working days.
"""

# A responder that quotes what it answers can quote qmail's very words.
VACATION_QUOTING_QMAIL = """
From: Reader <someone@example.org>
To: $verp
Subject: Away: failure notice
Message-ID: <away-1@example.org>
${marker}
Content-Type: text/plain

I am away until Monday. You wrote:

> Hi. This is the qmail-send program at mx.example.net.
> I'm afraid I wasn't able to deliver your message to the following addresses.
> This is a permanent error; I've given up. Sorry it didn't work out.

<helpdesk@example.org>:
Remote host said: 550 5.1.1 No such mailbox
"""

AUTO_REPLY_MARKERS = [
    "Auto-Submitted: auto-replied",
    "Auto-Submitted: auto-generated",
    "X-Autoreply: yes",
    "X-Autorespond: Automatic reply",
    "Precedence: auto_reply",
]


@pytest.mark.parametrize("marker", AUTO_REPLY_MARKERS)
def test_an_auto_reply_is_never_a_bounce(marker: str) -> None:
    # It suppressed helpdesk@example.org as a qmail bounce (5.0.0): its body
    # said "permanent error" and had a line "<address>:".
    for text in (HELPDESK_AUTO_REPLY, VACATION_QUOTING_QMAIL):
        with pytest.raises(UnparseableReport, match="auto-reply"):
            parse_report(report(text, marker=marker))


def test_qmail_is_read_only_behind_its_own_preamble() -> None:
    # No auto-reply header at all: the words "permanent error" make no qmail bounce.
    with pytest.raises(UnparseableReport, match="not a delivery status"):
        parse_report(report(HELPDESK_AUTO_REPLY, marker="X-Mailer: helpdesk 2.1"))
    # Auto-Submitted: no is a person's message, still no qmail bounce.
    with pytest.raises(UnparseableReport, match="not a delivery status"):
        parse_report(report(HELPDESK_AUTO_REPLY, marker="Auto-Submitted: no"))
    # Bounces themselves are marked auto-replied by Exim and Postfix (RFC 3834 §5):
    # those still count, by their X-Failed-Recipients header or their DSN part.
    assert parse_report(report(EXIM_BEHIND_AN_IP)).events[0].kind == "hard"


DSN_ACTION_WITH_COMMENT = """
From: MAILER-DAEMON@mx.example.net
To: $verp
Subject: Delivery Status Notification (Failure)
Message-ID: <comment-dsn@mx.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="C"

--C
Content-Type: text/plain

Delivery to the following recipient failed permanently: $rcpt

--C
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; $rcpt
Action: ${action}
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 User unknown

--C--
"""


@pytest.mark.parametrize(
    "action", ["failed (permanent)", "FAILED", "(gave up) failed", "Failed (by the (remote) MX)"]
)
def test_the_action_is_read_past_comments_and_case(action: str) -> None:
    # RFC 3464 §2.3.3 with RFC 822 comments: "failed (permanent)" read as a delay warning.
    (event,) = parse_report(report(DSN_ACTION_WITH_COMMENT, action=action)).events
    assert (event.kind, event.status) == ("hard", "5.1.1")
    warning = parse_report(report(DSN_ACTION_WITH_COMMENT, action="delayed (will retry)"))
    assert warning.events == ()


EXIM_UNKNOWN_CHARSET = """
Return-path: <>
Envelope-to: $verp
From: Mail Delivery System <Mailer-Daemon@mx.example.net>
To: $verp
Subject: Mail delivery failed: returning message to sender
Message-Id: <exim-8bit@mx.example.net>
X-Failed-Recipients: $rcpt
Auto-Submitted: auto-replied
Content-Type: text/plain; charset=x-unknown-8bit
Content-Transfer-Encoding: 8bit

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  $rcpt
    host mx.example.org [192.0.2.25]
    SMTP error from remote mail server after RCPT TO:<$rcpt>:
    550 5.1.1 Benutzer unbekannt: ${name}
"""


@pytest.mark.parametrize(
    "encoded", ["Müller".encode("latin-1"), "Müller".encode()], ids=["latin-1", "utf-8"]
)
def test_an_unknown_charset_is_read_as_utf8_or_latin1(encoded: bytes) -> None:
    # Python's codecs know no x-unknown-8bit: a LookupError set the bounce aside.
    data = report(EXIM_UNKNOWN_CHARSET, name="@NAME@").replace(b"@NAME@", encoded)
    (event,) = parse_report(data).events
    assert (event.kind, event.status, event.email) == ("hard", "5.1.1", "r0@example.org")
    assert "Benutzer unbekannt: Müller" in event.diagnostic


DSN_WITHOUT_PER_MESSAGE_FIELDS = """
From: postmaster@mx.example.net
To: $verp
Subject: Undeliverable: How sleep consolidates memory
Message-ID: <no-per-message@mx.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="N"

--N
Content-Type: text/plain

Delivery has failed to these recipients.

--N
Content-Type: message/delivery-status

Final-Recipient: rfc822; r0@example.org
Action: failed
Status: 5.1.1

Final-Recipient: rfc822; r1@example.org
Action: failed
Status: 5.1.10

--N--
"""


def test_a_dsn_without_its_per_message_block_keeps_its_first_recipient() -> None:
    # The first block was skipped as if it were the per-message one (r0 lost).
    events = parse_report(report(DSN_WITHOUT_PER_MESSAGE_FIELDS)).events
    assert [(e.email, e.kind, e.status) for e in events] == [
        ("r0@example.org", "hard", "5.1.1"),
        ("r1@example.org", "hard", "5.1.10"),
    ]
    # With it (and all in one block, no blank line): the per-message fields are no recipient.
    joined = DSN_WITHOUT_PER_MESSAGE_FIELDS.replace(
        "Final-Recipient: rfc822; r0",
        "Reporting-MTA: dns; mx.example.net\nFinal-Recipient: rfc822; r0",
    )
    events = parse_report(report(joined)).events
    assert [e.email for e in events] == ["r0@example.org", "r1@example.org"]
    with_block = DSN_WITHOUT_PER_MESSAGE_FIELDS.replace(
        "Final-Recipient: rfc822; r0",
        "Reporting-MTA: dns; mx.example.net\n\nFinal-Recipient: rfc822; r0",
    )
    events = parse_report(report(with_block)).events
    assert [e.email for e in events] == ["r0@example.org", "r1@example.org"]
