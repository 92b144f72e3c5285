"""What every recipient's message of one mailing is built from, and test sends.

`MessageContext` holds the rendered template, the unsubscribe secret and the
DKIM signer of one mailing and turns a claimed delivery into the exact bytes
to send (the fast path: no re-rendering).  `send_test_messages` is `send
--test`: the same bytes with a "[TEST] " subject and no ledger.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Engine

from newsletter.config import Settings
from newsletter.delivery.messageids import MessageIds
from newsletter.delivery.report import DeliveryReport, envelope_sender
from newsletter.delivery.transports import ConnectError, SendResult, Transport, make_transport
from newsletter.email.linktokens import make_preferences_token, preferences_url
from newsletter.email.message import MessageTemplate, Recipient, stuffed_body
from newsletter.email.tokens import checked_secret, load_secret, make_token, unsubscribe_url
from newsletter.errors import DeliveryError, RenderError
from newsletter.posts.collection import Post, PostCollection
from newsletter.store import mailings as q


def build_template(
    settings: Settings, mailing: q.MailingRow, posts: PostCollection, *, subject_prefix: str = ""
) -> MessageTemplate:
    """Render once per mailing (post or digest × list).

    A post's email comes through the render cache: the render `newsletter
    render` or the preview made is reused, and a pass resumed later (the
    daemon, a re-run) renders nothing (no Markdown, Jinja2 or premailer
    before the first message).  A digest's render names its mailing (the
    archive link), so nothing else could reuse it: it is rendered here (its
    inlining still comes from the inline cache).
    """
    list_settings = settings.get_list(mailing.list_name)
    if mailing.kind == "digest" or mailing.post_ids:
        from newsletter.email import render

        chosen = tuple(posts.find(pid) for pid in mailing.post_ids)
        rendered = render.render_digest(
            chosen,
            settings,
            list_settings,
            archive_url=render.digest_archive_url(settings, mailing.id),
        )
    else:
        from newsletter.email.rendercache import cached_render

        rendered = cached_render([posts.find(mailing.post_id)], settings, list_settings)
    return MessageTemplate.build(rendered, settings, subject_prefix=subject_prefix)


Signer = Callable[[bytes], bytes]


def make_signer(settings: Settings) -> Signer | None:
    if not settings.dkim.enabled:
        return None
    from newsletter.email.dkim import Signer as DkimSigner

    return DkimSigner.from_settings(settings.dkim).sign


def describe_result(result: SendResult) -> str:
    code = f"{result.code} " if result.code is not None else ""
    return f"{code}{result.text}".strip() or "refused"


class MessageContext:
    """What every recipient's message shares: template, secret, signer."""

    def __init__(
        self,
        settings: Settings,
        mailing: q.MailingRow,
        template: MessageTemplate,
        signer: Signer | None,
        engine: Engine,
    ) -> None:
        self.settings = settings
        self.list_name = mailing.list_name
        self.template = template
        self.signer = signer
        self.secret = checked_secret(settings, engine)
        self.message_ids = MessageIds(self.secret, mailing.id, template.domain)

    def message_id(self, row: q.Claimed) -> str:
        """The delivery's Message-ID: the one it recorded under an older version
        (its retries keep it), else the one naming it (`delivery.messageids`)."""
        return row.message_id or self.message_ids(row.id)

    def message(self, row: q.Claimed) -> bytes:
        data = self.template.personalise(self._recipient(row), message_id=self.message_id(row))
        return self.signer(data) if self.signer is not None else data

    def data(self, row: q.Claimed) -> bytes:
        """`message` as SMTP DATA content (dot-stuffed, no final dot).

        Unsigned, the template stuffs only the per-recipient values (its
        constant parts were stuffed once); a signature covers the whole
        message, so a signed one is stuffed whole.
        """
        recipient = self._recipient(row)
        mid = self.message_id(row)
        if self.signer is None:
            return self.template.data(recipient, message_id=mid)
        signed = self.signer(self.template.personalise(recipient, message_id=mid))
        return stuffed_body(signed)

    def _recipient(self, row: q.Claimed) -> Recipient:
        token = make_token(self.secret, row.uid, self.list_name)
        prefs = ""
        if self.template.uses_preferences:  # else no footer link: spare its MAC
            prefs = preferences_url(self.settings, make_preferences_token(self.secret, row.uid))
        return Recipient(row.email, row.name, unsubscribe_url(self.settings, token), prefs)


def test_recipients(addresses: tuple[str, ...]) -> tuple[str, ...]:
    """`--test` addresses checked as a subscriber's would be, each once
    (case-insensitively), in the order given; the first bad one raises."""
    from newsletter.audience.addresses import normalised
    from newsletter.email.headers import clean_address
    from newsletter.errors import SubscriberError

    if not addresses:
        raise DeliveryError("no test address given")
    unique: dict[str, str] = {}
    for address in addresses:
        clean_address(address)  # what no header may carry, named as such
        try:
            email, key = normalised(address)
        except SubscriberError as exc:
            raise RenderError(exc.message, recipient=address) from None
        unique.setdefault(key, email)
    return tuple(unique.values())


def send_test_messages(
    settings: Settings,
    post: Post,
    list_name: str,
    addresses: tuple[str, ...],
    *,
    transport: Transport | None = None,
) -> DeliveryReport:
    """Send a "[TEST] " copy to each address; nothing is recorded."""
    from newsletter.email import render

    addresses = test_recipients(addresses)  # every one before any is sent: all or nothing
    rendered = render.render_email(post, settings, settings.get_list(list_name))
    template = MessageTemplate.build(rendered, settings, subject_prefix="[TEST] ")
    signer = make_signer(settings)
    secret = load_secret(settings)
    own = transport is None
    transport = transport or make_transport(settings)
    sent = failed = 0
    errors: list[str] = []
    try:
        for address in addresses:
            token = make_token(secret, "test", list_name)
            recipient = Recipient(
                address, "", unsubscribe_url(settings, token), preferences_url(settings, "test")
            )
            data = template.personalise(recipient, mailing_key=f"test-{time.time_ns()}")
            data = signer(data) if signer is not None else data
            try:
                result = transport.send(envelope_sender(settings), address, data)
            except ConnectError as exc:
                result = SendResult(address, False, exc.code, exc.message, stage="connect")
            if result.ok:
                sent += 1
            else:
                failed += 1
                errors.append(f"{address}: {describe_result(result)}")
    finally:
        if own:
            transport.close()
    return DeliveryReport(sent=sent, failed=failed, errors=tuple(errors))
