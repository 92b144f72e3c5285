"""message: the MIME bytes, the fast path, headers that cannot be injected."""

from __future__ import annotations

import email.policy
import email.utils
import re
from dataclasses import replace
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import EmailMessage

import pytest
from test_render_support import (
    FIXTURES,
    assert_wire_format,
    make_post,
    make_settings,
    parse,
    urls_in,
)

from newsletter.config import EmailSettings, ListSettings, Settings, UnsubscribeSettings
from newsletter.email.headers import format_address
from newsletter.email.linktokens import confirm_url, preferences_url
from newsletter.email.message import (
    MessageTemplate,
    Recipient,
    fill_placeholders,
    message_id,
)
from newsletter.email.render import RenderedEmail, digest_archive_url, render_email
from newsletter.email.tokens import unsubscribe_url
from newsletter.errors import RenderError

DATE = datetime(2024, 6, 8, 7, 0, tzinfo=UTC)
ALICE = Recipient(
    "alice@example.com", "Alice Example", "https://news.tides.example.com/unsubscribe/tokA"
)
BOB = Recipient("bob@example.org", "Bob", "https://news.tides.example.com/unsubscribe/tokB")


def build(
    settings: Settings | None = None, rendered: RenderedEmail | None = None, **kw: object
) -> MessageTemplate:
    settings = settings or make_settings()
    if rendered is None:
        rendered = render_email(make_post(), settings, settings.lists["everything"])
    return MessageTemplate.build(rendered, settings, date=DATE, **kw)  # type: ignore[arg-type]


def bodies(msg: EmailMessage) -> tuple[str, str]:
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


# --------------------------------------------------------------------------- structure


def test_message_structure_and_headers() -> None:
    raw = build().personalise(ALICE, mailing_key="m1")
    assert_wire_format(raw)
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in parts)
    assert msg["From"] == "Tide Notes <letters@tides.example.com>"
    assert msg["To"] == "Alice Example <alice@example.com>"
    assert msg["Reply-To"] == "editor@tides.example.com"
    assert msg["Subject"] == "Counting Life in Tide Pools"
    assert msg["Date"] == "Sat, 08 Jun 2024 07:00:00 +0000"
    assert msg["Message-ID"] == message_id("m1", "alice@example.com", "tides.example.com")
    # A phrase with ":" is quoted (RFC 5322 §3.2.5), so it is not read as a group.
    assert msg["List-Id"] == '"Tide Notes: every post" <everything.tides.example.com>'
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["MIME-Version"] == "1.0"
    assert not msg.defects and not any(p.defects for p in parts)


def test_list_unsubscribe_is_one_unencoded_line_with_mailto() -> None:
    raw = build().personalise(ALICE)
    lines = [line for line in raw.split(b"\r\n") if line.startswith(b"List-Unsubscribe:")]
    assert lines == [
        b"List-Unsubscribe: <https://news.tides.example.com/unsubscribe/tokA>, "
        b"<mailto:unsubscribe@tides.example.com?subject=unsubscribe>"
    ]
    assert b"=?" not in lines[0]


def test_list_unsubscribe_without_mailto_and_no_reply_to() -> None:
    base = make_settings(reply_to=None)
    settings = Settings(
        site=base.site,
        email=base.email,
        web=base.web,
        lists=base.lists,
        unsubscribe=UnsubscribeSettings(mailto=None),
    )
    msg = parse(build(settings).personalise(ALICE))
    assert msg["List-Unsubscribe"] == "<https://news.tides.example.com/unsubscribe/tokA>"
    assert msg["Reply-To"] is None


@pytest.mark.parametrize(
    ("mailto", "url"),
    [
        # A non-ASCII domain crashed every message (UnicodeEncodeError).
        ("unsubscribe@tïdes.example.com", "mailto:unsubscribe@xn--tdes-5pa.example.com"),
        ("jürgen@tides.example.com", "mailto:j%C3%BCrgen@tides.example.com"),
        # A query of its own got a second "?" appended.
        ("unsub@tides.example.com?subject=stop", "mailto:unsub@tides.example.com?subject=stop"),
        ("mailto:unsub@tides.example.com?body=x", "mailto:unsub@tides.example.com?body=x"),
        ("MAILTO:unsub@tides.example.com", "mailto:unsub@tides.example.com"),
    ],
)
def test_list_unsubscribe_mailto_is_an_ascii_url(mailto: str, url: str) -> None:
    base = make_settings()
    settings = Settings(
        site=base.site,
        email=base.email,
        web=base.web,
        lists=base.lists,
        unsubscribe=UnsubscribeSettings(mailto=mailto),
    )
    raw = build(settings).personalise(ALICE)
    (line,) = [ln for ln in raw.split(b"\r\n") if ln.startswith(b"List-Unsubscribe:")]
    entries = line.decode("ascii").split(": ", 1)[1].split(", ")
    assert entries[0] == "<https://news.tides.example.com/unsubscribe/tokA>"
    target = entries[1][1:-1]
    assert target.startswith(url)
    assert target.count("?") == 1 and "subject=" in target
    if "subject=" not in url:
        assert target.endswith("subject=unsubscribe")


def test_a_non_ascii_public_url_goes_out_as_an_ascii_uri() -> None:
    """`check` accepted it, then every message failed ("unusable unsubscribe
    URL"): the header needs a URI, so the host goes in IDNA form and the
    path percent-encoded (RFC 3987 §3.1), in the header and in the body."""
    base = make_settings()
    settings = replace(base, web=replace(base.web, public_url="https://bülten.example.com/nöws/"))
    template = build(settings)
    recipient = Recipient(
        "a@example.com",
        "Ann",
        unsubscribe_url(settings, "tok"),
        preferences_url(settings, "ptok"),
    )
    raw = template.personalise(recipient)
    assert_wire_format(raw)
    base_uri = "https://xn--blten-kva.example.com/n%C3%B6ws"
    msg = parse(raw)
    assert msg["List-Unsubscribe"].startswith(f"<{base_uri}/unsubscribe/tok>")
    text, html = bodies(msg)
    assert f"{base_uri}/unsubscribe/tok" in text
    assert f"{base_uri}/archive/tide-pools" in text
    assert f'href="{base_uri}/archive/tide-pools"' in html
    assert confirm_url(settings, "c") == f"{base_uri}/confirm/c"
    assert digest_archive_url(settings, 7) == f"{base_uri}/archive/digest/7"


def test_long_unsubscribe_url_stays_on_one_line() -> None:
    url = "https://news.tides.example.com/unsubscribe/" + "t" * 300
    raw = build().personalise(Recipient("a@example.com", "", url))
    (line,) = [ln for ln in raw.split(b"\r\n") if ln.startswith(b"List-Unsubscribe:")]
    assert url.encode() in line and len(line) < 998
    assert parse(raw)["To"] == "a@example.com"


def test_bodies_decode_to_the_rendered_parts_with_values_filled() -> None:
    settings = make_settings()
    rendered = render_email(make_post(), settings, settings.lists["everything"])
    raw = MessageTemplate.build(rendered, settings, date=DATE).personalise(ALICE)
    text, html = bodies(parse(raw))
    want_html, want_text = fill_placeholders(rendered, ALICE)
    assert text.replace("\r\n", "\n") == want_text
    assert html.replace("\r\n", "\n") == want_html
    assert b"NLPH" not in raw


def test_every_url_absolute_and_every_image_has_alt_in_the_sent_html() -> None:
    settings = make_settings(content="full")
    _, html = bodies(parse(build(settings).personalise(ALICE)))
    urls = urls_in(html)
    assert "https://news.tides.example.com/unsubscribe/tokA" in urls
    ids = set(re.findall(r'\bid="([^"]+)"', html))
    # Every URL absolute; a footnote link to its note in this same email is local.
    local = [u for u in urls if u.startswith("#")]
    assert local and all(u[1:] in ids for u in local), local
    assert all(u.startswith(("https://", "mailto:")) for u in urls if u not in local), urls
    images = re.findall(r"<img\b[^>]*>", html)
    assert images and all(" alt=" in img for img in images)


# --------------------------------------------------------------------------- line lengths


def test_3000_character_paragraph_and_1500_character_url() -> None:
    long_url = "https://tides.example.com/" + "q" * 1474
    assert len(long_url) == 1500
    body = (
        "tide " * 600
    ).strip() + f"\n\n[a very long link]({long_url})\n\n![pic]({long_url}.png)\n"
    settings = make_settings(content="full")
    post = make_post(body, excerpt_html="<p>" + "x" * 3000 + "</p>")
    rendered = render_email(post, settings, settings.lists["everything"])
    assert max(len(line) for line in rendered.html.splitlines()) > 998  # inlining made it long
    raw = MessageTemplate.build(rendered, settings, date=DATE).personalise(ALICE)
    assert_wire_format(raw)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    text, html = bodies(parse(raw))
    assert f'href="{long_url}"' in html and long_url in text
    assert ("tide " * 599) + "tide" in html


def test_body_lines_obey_quoted_printable_limit_with_long_values() -> None:
    long_name = "Ünïcödé " * 40
    raw = build().personalise(Recipient("c@example.com", long_name, ALICE.unsubscribe_url))
    assert_wire_format(raw)
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in body.split(b"\r\n")) <= 76


# --------------------------------------------------------------------------- recipients


def test_two_recipients_differ_only_where_they_should() -> None:
    template = build()
    a = template.personalise(ALICE, mailing_key="m1")
    b = template.personalise(BOB, mailing_key="m1")

    def normalise(raw: bytes, r: Recipient) -> tuple[list[tuple[str, str]], str, str]:
        msg = parse(raw)
        headers = [
            (k, str(v)) for k, v in msg.items() if k not in ("To", "Message-ID", "List-Unsubscribe")
        ]
        text, html = bodies(msg)
        subst = [(r.unsubscribe_url, "URL"), (r.email, "EMAIL"), (r.name, "NAME")]
        for value, token in subst:
            text, html = text.replace(value, token), html.replace(value, token)
        return headers, text, html

    assert normalise(a, ALICE) == normalise(b, BOB)
    ma, mb = parse(a), parse(b)
    assert (ma["To"], mb["To"]) == ("Alice Example <alice@example.com>", "Bob <bob@example.org>")
    assert ma["Message-ID"] != mb["Message-ID"]
    assert "tokA" in ma["List-Unsubscribe"] and "tokB" in mb["List-Unsubscribe"]
    assert "alice@example.com" in bodies(ma)[0] and "bob@example.org" in bodies(mb)[0]


def test_message_id_is_stable_per_mailing_and_recipient() -> None:
    t1, t2 = build(), build()
    first = parse(t1.personalise(ALICE, mailing_key="post×list#1"))["Message-ID"]
    assert parse(t2.personalise(ALICE, mailing_key="post×list#1"))["Message-ID"] == first
    upper = Recipient("ALICE@example.com", "Alice Example", ALICE.unsubscribe_url)
    assert parse(t1.personalise(upper, mailing_key="post×list#1"))["Message-ID"] == first
    assert parse(t1.personalise(ALICE, mailing_key="other"))["Message-ID"] != first
    assert re.fullmatch(r"<[0-9a-f]{32}@tides\.example\.com>", first)


@pytest.mark.parametrize(
    ("name", "address", "display", "domain"),
    [
        ("Zoë Ünal", "zoe@example.com", "Zoë Ünal", "example.com"),
        ("山田 太郎", "taro@example.com", "山田 太郎", "example.com"),
        ('O\'Brien, "Pat"', "pat@example.com", 'O\'Brien, "Pat"', "example.com"),
        ("Ana", "ana@bücher.example", "Ana", "xn--bcher-kva.example"),
        ("Ελένη", "eleni@παράδειγμα.example", "Ελένη", "xn--hxajbheg2az3al.example"),
        ("", "plain@example.org", "", "example.org"),
        ("x" * 200, "long@example.com", "x" * 200, "example.com"),
    ],
)
def test_non_ascii_names_and_idn_addresses_in_to(
    name: str, address: str, display: str, domain: str
) -> None:
    raw = build().personalise(Recipient(address, name, ALICE.unsubscribe_url))
    assert_wire_format(raw)
    header = raw.split(b"\r\nTo: ", 1)[1].split(b"\r\nReply-To:")[0]
    assert header.isascii()  # RFC 2047 + IDNA: no SMTPUTF8 needed
    (addr,) = parse(raw)["To"].addresses
    assert addr.display_name == display
    assert addr.domain == domain
    assert addr.username == address.split("@")[0]


def test_long_non_ascii_name_is_split_into_valid_encoded_words() -> None:
    name = "Zoë Ünal " * 12
    raw = build().personalise(Recipient("zoe@example.com", name, ALICE.unsubscribe_url))
    assert_wire_format(raw)
    value = raw.split(b"\r\nTo: ", 1)[1].split(b"\r\nReply-To:")[0].decode("ascii")
    words = re.findall(r"=\?utf-8\?b\?[^?]*\?=", value)
    assert len(words) > 1 and all(len(w) <= 75 for w in words)  # RFC 2047 §2
    # Python's address parser adds spaces between encoded words (against
    # RFC 2047 §6.2), so decode the phrase the way mail clients do.
    phrase = value.rsplit(" <", 1)[0]
    assert str(make_header(decode_header(phrase))) == name.strip()


@pytest.mark.parametrize("name", ["Zoë Ünal-Çelik Aydınlıoğlu Şahin", "é" * 67, "Zoë"])
def test_to_with_an_encoded_name_keeps_lines_within_78(name: str) -> None:
    """RFC 5322 §2.1.1: the last encoded word and the address made 86 columns."""
    recipient = Recipient("zoe.unal-celik@example.com", name, ALICE.unsubscribe_url)
    raw = build().personalise(recipient)
    value = raw.split(b"\r\nTo: ", 1)[1].split(b"\r\nReply-To:")[0]
    assert all(len(line) <= 78 for line in (b"To: " + value).split(b"\r\n"))
    assert parse(raw)["To"].addresses[0].addr_spec == recipient.email
    phrase = value.decode("ascii").replace("\r\n", "").rsplit(" <", 1)[0]
    assert str(make_header(decode_header(phrase))) == name


def test_name_with_newlines_cannot_inject_headers() -> None:
    evil = Recipient("eve@example.com", "Eve\r\nBcc: all@example.org", ALICE.unsubscribe_url)
    msg = parse(build().personalise(evil))
    assert msg["Bcc"] is None
    assert msg["To"].addresses[0].display_name == "Eve Bcc: all@example.org"


@pytest.mark.parametrize(
    "address", ["a@example.com\r\nBcc: x@example.org", "a b@example.com", "<a@example.com>", ""]
)
def test_unusable_address_is_refused_with_the_recipient(address: str) -> None:
    with pytest.raises(RenderError) as info:
        build().personalise(Recipient(address, "A", ALICE.unsubscribe_url))
    assert info.value.recipient == address.strip()


@pytest.mark.parametrize(
    "url",
    [
        "https://x.example.com/u/a b",
        "https://x.example.com/u/a>b",
        "https://x.example.com/\r\nBcc: y",
    ],
)
def test_unusable_unsubscribe_url_is_refused(url: str) -> None:
    with pytest.raises(RenderError, match="unusable unsubscribe URL"):
        build().personalise(Recipient("a@example.com", "A", url))


# --------------------------------------------------------------------------- subjects


HOSTILE = [
    line.encode().decode("unicode_escape")
    for line in (FIXTURES / "hostile-subjects.txt").read_text(encoding="utf-8").splitlines()
]


@pytest.mark.parametrize("subject", HOSTILE)
def test_hostile_subjects_never_inject_headers(subject: str) -> None:
    settings = make_settings(subject=subject.replace("{", "{{ '{' }}"))
    raw = build(settings).personalise(ALICE)
    assert_wire_format(raw)
    msg = parse(raw)
    assert msg["Bcc"] is None and msg["X-Injected"] is None
    assert len(msg.get_all("Subject") or []) == 1
    decoded = str(msg["Subject"])
    assert "\r" not in decoded and "\n" not in decoded and "\u2028" not in decoded
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()  # non-ASCII went out as RFC 2047 encoded words
    expected = re.sub(r"[\s\x00-\x1f\u2028\u2029]+", " ", subject).strip()
    assert decoded == expected


@pytest.mark.parametrize("subject", ["x" * 2000, "ü" * 700, "a " * 900, "=?" + "y" * 1500])
def test_very_long_subjects_fold_within_limits(subject: str) -> None:
    raw = build(make_settings(subject=subject)).personalise(ALICE)
    assert_wire_format(raw)
    assert parse(raw)["Subject"] == subject.strip()


def test_non_ascii_subject_is_rfc2047_encoded() -> None:
    raw = build(make_settings(subject="Gelgit havuzları: {{ post.title }}")).personalise(ALICE)
    line = raw.split(b"\r\nSubject: ", 1)[1].split(b"\r\n")[0]
    assert b"=?utf-8?" in line and line.isascii()
    assert parse(raw)["Subject"] == "Gelgit havuzları: Counting Life in Tide Pools"


def test_test_variant_prefixes_the_subject() -> None:
    settings = make_settings()
    rendered = render_email(make_post(), settings, settings.lists["everything"])
    msg = parse(MessageTemplate.for_test(rendered, settings).personalise(ALICE))
    assert msg["Subject"] == "[TEST] Counting Life in Tide Pools"
    assert parse(MessageTemplate.build(rendered, settings).personalise(ALICE))["Subject"] == (
        "Counting Life in Tide Pools"
    )


def test_subject_with_recipient_name_is_filled_per_recipient() -> None:
    template = build(make_settings(subject="{{ recipient.name }}, new: {{ post.title }}"))
    assert (
        parse(template.personalise(ALICE))["Subject"]
        == "Alice Example, new: Counting Life in Tide Pools"
    )
    assert parse(template.personalise(BOB))["Subject"] == "Bob, new: Counting Life in Tide Pools"


# --------------------------------------------------------------------------- settings and misc


@pytest.mark.parametrize(
    "sender",
    [
        "not an address",
        "a@example.com, b@example.com",
        "Evil\r\nBcc: x@example.org <a@example.com>",
    ],
)
def test_bad_from_is_reported_with_its_key(sender: str) -> None:
    base = make_settings()
    settings = Settings(
        site=base.site, web=base.web, lists=base.lists, email=EmailSettings(from_=sender)
    )
    with pytest.raises(RenderError) as info:
        build(settings)
    assert info.value.key == "email.from"


def test_non_ascii_from_name_is_encoded() -> None:
    settings = make_settings(from_="Gelgit Notları <letters@tides.example.com>")
    raw = build(settings).personalise(ALICE)
    assert raw.split(b"\r\n\r\n", 1)[0].isascii()
    assert parse(raw)["From"].addresses[0].display_name == "Gelgit Notları"


def test_non_ascii_from_domain_is_idna_not_an_encoded_word() -> None:
    """An encoded word is no part of an address (RFC 2047 §5): the domain goes
    in IDNA form, in the header and as the envelope sender."""
    settings = make_settings(
        from_="Gelgit Notları <letters@gelgit-notları.example>",
        reply_to="Yanıt <yanit@gelgit-notları.example>",
    )
    template = build(settings)
    raw = template.personalise(ALICE)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"=?" not in head.split(b"@", 1)[1].split(b">", 1)[0]
    msg = parse(raw)
    (sender,) = msg["From"].addresses
    assert sender.display_name == "Gelgit Notları"
    assert sender.addr_spec == "letters@xn--gelgit-notlar-gbc.example"
    assert msg["Reply-To"].addresses[0].addr_spec == "yanit@xn--gelgit-notlar-gbc.example"
    assert template.sender == "letters@xn--gelgit-notlar-gbc.example"


def test_non_ascii_list_title_is_encoded_without_its_quotes() -> None:
    """Quoting first and encoding the quoted string put the quotes and their
    backslashes inside the encoded word: a reader saw `"Gelgit \\"notları\\""`."""
    base = make_settings()
    title = 'Gelgit "notları": her yazı'
    lists = {"everything": ListSettings(name="everything", title=title)}
    settings = Settings(site=base.site, web=base.web, email=base.email, lists=lists)
    raw = build(settings).personalise(ALICE)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    line = head.split(b"List-Id: ", 1)[1].split(b"\r\nList-Unsubscribe:", 1)[0]
    assert all(len(part) <= 78 for part in line.split(b"\r\n"))
    assert str(parse(raw)["List-Id"]) == f"{title} <everything.tides.example.com>"


@pytest.mark.parametrize(
    "title",
    [
        'Quo"ted =?utf-8?q?x?= title',  # looks like an encoded word
        "x(y)" * 50,  # one long word that needs quoting
        "A" * 200,  # one long atom
        "Gelgit notları" + " ve notlar" * 8,  # encoded words: the first line was 81 columns
        "Field Notes: every post, with a rather long title that goes past 78 columns",
        "Tide Notes",
    ],
)
def test_list_id_keeps_its_id_outside_encoded_words(title: str) -> None:
    """RFC 2919: `List-Id: phrase <list-id>`.  A title with "=?" or a word
    too long to fold had the whole value, `<list-id>` and the quotes
    included, encoded: filters matching the id found nothing."""
    base = make_settings()
    lists = {"everything": ListSettings(name="everything", title=title)}
    settings = Settings(site=base.site, web=base.web, email=base.email, lists=lists)
    raw = build(settings).personalise(ALICE)
    head = raw.split(b"\r\n\r\n", 1)[0]
    value = head.split(b"List-Id: ", 1)[1].split(b"\r\nList-Unsubscribe:", 1)[0]
    assert all(len(part) <= 78 for part in (b"List-Id: " + value).split(b"\r\n"))
    unfolded = value.replace(b"\r\n", b"").decode("ascii")
    phrase, ident = unfolded.rsplit(" ", 1)
    assert ident == "<everything.tides.example.com>"
    if phrase.startswith('"'):
        assert "=?" not in phrase  # RFC 2047 §5: never inside a quoted string
        assert email.utils.unquote(phrase) == title
    else:
        assert str(make_header(decode_header(phrase))) == title


def test_sample_message_for_previews() -> None:
    msg = parse(build().sample())
    assert msg["To"] == "Sample Reader <reader@example.com>"
    assert "https://news.tides.example.com/unsubscribe/SAMPLE-TOKEN" in msg["List-Unsubscribe"]


def test_build_is_deterministic_and_matches_python_email_reading() -> None:
    a, b = build().personalise(ALICE), build().personalise(ALICE)
    assert a == b
    # Python's own generator, given the parsed message, produces equivalent content.
    msg = parse(a)
    again = parse(msg.as_bytes(policy=email.policy.SMTP))
    assert bodies(again) == bodies(msg)


def test_format_address_quotes_specials() -> None:
    assert format_address("Plain Name", "a@example.com") == "Plain Name <a@example.com>"
    assert format_address("Doe, Jane", "a@example.com") == '"Doe, Jane" <a@example.com>'
    assert format_address('Say "hi"\\', "a@example.com") == '"Say \\"hi\\"\\\\" <a@example.com>'


@pytest.mark.parametrize(
    "name",
    [
        "=?utf-8?q?Eve=0D=0ABcc:_x@evil.example?=",
        "=?utf-8?q?Eve=0D=0A?=",  # an atom phrase: would go out bare
        "=?utf-8?b?RXZlDQpCY2M6IHhAZXZpbC5leGFtcGxl?=",
        "Eve =?UTF-8?Q?=0A?= Example",
    ],
)
def test_a_name_that_looks_like_an_encoded_word_is_read_back_literally(name: str) -> None:
    raw = build().personalise(Recipient("eve@example.com", name, ALICE.unsubscribe_url))
    assert_wire_format(raw)
    msg = parse(raw)  # the stdlib parser, policy.default, as a mail client reads it
    (addr,) = msg["To"].addresses
    assert addr.display_name == name
    assert "\r" not in str(msg["To"]) and "\n" not in str(msg["To"])
    assert msg["Bcc"] is None


# --------------------------------------------------------------------------- SMTP DATA


def _dotty_rendered() -> RenderedEmail:
    """Lines that start with dots everywhere: in the constant text, right after
    each placeholder, and a lone dot (what would end DATA early)."""
    from newsletter.email.render import PLACEHOLDERS as PH

    text = (
        ".starts with a dot\n.\n..two dots\nmiddle . dot\n"
        f"{PH['name']}\n.after the name {PH['email']}\n.{PH['unsubscribe_url']}.\n"
        f"{PH['preferences_url']}\n." + "x" * 75 + ".\n.end"
    )
    html_part = f"<p>.{PH['name']}</p>\n.<a href='{PH['unsubscribe_url']}'>.</a>\n.{PH['email']}"
    return RenderedEmail("p", "everything", "Dots", html_part, text)


DOTTY_RECIPIENTS = [
    ALICE,
    Recipient(
        ".dot@example.com", ".Leading Dot", "https://u.example.com/.x", "https://p.example.com/."
    ),
    Recipient(
        "a" * 60 + ".b@example.org",
        "N" * 74 + "." * 10,  # a name wrapped by quoted-printable right before its dots
        "https://u.example.com/" + "." * 120,
        "https://p.example.com/" + "a" * 53 + "." * 30,
    ),
    Recipient("x@example.net", "", "https://u.example.com/t", ""),
]


@pytest.mark.parametrize("recipient", DOTTY_RECIPIENTS, ids=range(len(DOTTY_RECIPIENTS)))
def test_data_is_the_personalised_message_dot_stuffed(recipient: Recipient) -> None:
    """`data` stuffs segment by segment what `stuffed_body` stuffs whole: same bytes."""
    from newsletter.email.message import stuffed_body

    template = build(rendered=_dotty_rendered())
    assert template.data_segments is not None  # the fast path, not the fallback
    raw = template.personalise(recipient, mailing_key="m1")
    assert b"\r\n." in raw  # the case this is about
    data = template.data(recipient, mailing_key="m1")
    assert data == stuffed_body(raw)
    mid = message_id("m1", recipient.email, "tides.example.com")
    assert b"\r\nMessage-ID: " + mid.encode() + b"\r\n" in data
    assert not re.search(rb"(^|\r\n)\.\r\n", data)  # no line is a lone dot


def test_data_of_the_real_template_matches_for_every_recipient() -> None:
    from newsletter.email.message import stuffed_body

    template = build()
    for recipient in DOTTY_RECIPIENTS:
        raw = template.personalise(recipient, mailing_key="k")
        assert template.data(recipient, mailing_key="k") == stuffed_body(raw)


def test_stuffed_body_normalises_bare_line_ends_and_a_leading_dot() -> None:
    from newsletter.email.message import stuffed_body

    assert stuffed_body(b".a\nb\r.c\r\n.") == b"..a\r\nb\r\n..c\r\n..\r\n"


def test_data_doubles_a_constant_dot_only_at_the_start_of_a_line() -> None:
    """A constant that starts with a dot: doubled after a header (a line end),
    not after a quoted-printable value that leaves the line open."""
    from newsletter.email import message as m

    segments = (b".first\r\n", m.TO, b".after a header\r\n", m.EMAIL_TEXT, b".same line")
    template = MessageTemplate(
        build().rendered,
        make_settings(),
        segments=segments,
        data_segments=m._data_segments(segments),
    )
    data = template.data(BOB)
    assert data == m.stuffed_body(template.personalise(BOB))
    assert data.startswith(b"..first\r\nTo: Bob <bob@example.org>\r\n..after a header\r\n")
    assert data.endswith(b"bob@example.org.same line\r\n")
