"""Header folding and quoted-printable bodies, over many generated inputs: what
a reader decodes is exactly what was written, and every line stays within its
limit (RFC 5322 §2.1.1: 78; RFC 2047 §2: encoded words ≤ 75; RFC 2045 §6.7:
quoted-printable lines ≤ 76)."""

from __future__ import annotations

import email
import email.policy
import quopri
import random
import re
from dataclasses import replace
from email.header import decode_header, make_header
from email.headerregistry import Address
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_render_support import make_settings

from newsletter.cli import main
from newsletter.config import ListSettings
from newsletter.email.headers import fold_address, fold_header, format_address, list_id_header
from newsletter.email.message import _BODY_SLOTS, _qp_segments, _qp_value
from newsletter.email.rendered import PLACEHOLDERS, one_line

FRENCH = "Ça ne marche pas: l'été où j'ai appris à déboguer mes tests à Besançon et à Orléans"
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[bBqQ]\?[^?]*\?=")
_ADJACENT_ENCODED_WORDS = re.compile(r"\?=\s+=\?")

WORDS = {
    "de": [
        "Über", "größere", "Straßenbahn", "Grüße", "für", "Äpfel", "Öl", "schön",
        "Müller", "und", "die", "der", "Prüfung", "Fußgängerüberweg", "heißt", "im",
        "Bäckerei", "Donaudampfschifffahrtsgesellschaftskapitänsmützenabzeichenträgerin",
    ],
    "fr": [
        "Ça", "ne", "marche", "pas:", "l'été", "où", "j'ai", "appris", "à", "déboguer",
        "mes", "tests", "Besançon", "Orléans", "élève", "garçon", "«", "»", "—", "Noël",
        "œuvre", "et", "le", "qu'il",
    ],
    "ja": [
        "日本語", "の", "テスト", "東京", "で", "学んだ", "こと", "デバッグ", "猫",
        "ありがとうございます", "、", "。", "「見出し」", "Python", "と",
    ],
    "emoji": ["🎉", "👩‍💻", "🇩🇪", "❤️", "🐙", "✨✨", "👍🏽", "new", "🎉🎉🎉"],
    "ascii": [
        "Tide", "pools", "and", "the", "C++", "a=b", "50%", "what?", "under_score",
        "(notes)", "x-y", "e.g.", '"quoted"', "=?utf-8?q?x?=", "?=", "=", "_", "Field",
        "Notes:", "Doe,", "<tag>", "back\\slash", "a.b", "@home",
    ],
}  # fmt: skip


def _long_word(rng: random.Random) -> str:
    """A word longer than a line, or nearly: ASCII, accented, CJK or mixed."""
    length = rng.randint(60, 200)
    alphabet = rng.choice(["x", "ab", "üé", "日本語", "a😀", "aé-"])
    return "".join(rng.choice(alphabet) for _ in range(length))


def titles(count: int, seed: int) -> list[str]:
    """`count` one-line titles (single spaces, as `one_line` leaves them)."""
    rng = random.Random(seed)
    out = [FRENCH]
    languages = sorted(WORDS)
    while len(out) < count:
        mix = rng.sample(languages, rng.choice([1, 1, 1, 2, 3]))
        words = [rng.choice(WORDS[rng.choice(mix)]) for _ in range(rng.randint(1, 24))]
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words) + 1), _long_word(rng))
        # Japanese is written without spaces: some titles are one "word".
        title = ("" if "ja" in mix and rng.random() < 0.5 else " ").join(words)
        assert one_line(title) == title
        out.append(title)
    return out


TITLES = titles(1500, seed=2047)


def unfolded(header: bytes, name: str) -> str:
    """The value of one header line (with its continuations), unfolded
    (RFC 5322 §2.2.3: only the CRLFs go) and without the space after the colon."""
    text = header.decode("ascii")
    assert text.startswith(f"{name}:") and text.endswith("\r\n")
    value = text[len(name) + 1 : -2].replace("\r\n", "")
    return value[1:] if value.startswith(" ") else value


def rfc2047(value: str) -> str:
    """`value` decoded as mail readers do (RFC 2047 §6.2: whitespace between
    two encoded words is dropped)."""
    return str(make_header(decode_header(value)))


def assert_within_limits(header: bytes) -> None:
    lines = header.split(b"\r\n")
    assert lines[-1] == b"" and all(lines[:-1]), header  # CRLF-terminated, no blank line
    assert all(len(line) <= 78 for line in lines), header  # RFC 5322 §2.1.1
    assert all(line[:1] in b" \t" for line in lines[1:-1]), header  # continuations
    words = _ENCODED_WORD.findall(header.decode("ascii"))
    assert all(len(word) <= 75 for word in words), header  # RFC 2047 §2


def python_reads(head: bytes) -> email.message.EmailMessage:
    """`head` (header lines) as Python's own parser reads a whole message."""
    msg = email.message_from_bytes(head + b"\r\nbody\r\n", policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


# --------------------------------------------------------------------------- Subject


def test_the_french_title_keeps_every_space() -> None:
    """The policy folded between two encoded words at the space before "à":
    whitespace there is no text (RFC 2047 §6.2), every reader showed "apprisà"."""
    header = fold_header("Subject", FRENCH)
    assert_within_limits(header)
    assert rfc2047(unfolded(header, "Subject")) == FRENCH
    assert python_reads(header)["Subject"] == FRENCH


@pytest.mark.parametrize("start", range(0, len(TITLES), 250))
def test_generated_subjects_read_back_exactly(start: int) -> None:
    for title in TITLES[start : start + 250]:
        header = fold_header("Subject", title)
        assert_within_limits(header)
        assert rfc2047(unfolded(header, "Subject")) == title, header
        msg = python_reads(header)
        assert msg["Subject"] == title, header
        assert not msg["Subject"].defects, header


@pytest.mark.parametrize(
    "subject",
    [
        "x" * 2000,
        "ü" * 700,
        "a " * 300 + "b",
        "=?" + "y" * 1500,
        "日本語" * 100,
        "👩‍💻" * 60,
        "x" * 69,  # the longest word that fits after "Subject: "
        "x" * 70,
        "Über " + "x" * 73 + " für",
        "a",
        "ü",
    ],
    ids=lambda s: f"{s[:8]!a}x{len(s)}",
)
def test_long_and_short_subjects(subject: str) -> None:
    header = fold_header("Subject", subject)
    assert_within_limits(header)
    assert rfc2047(unfolded(header, "Subject")) == subject
    assert python_reads(header)["Subject"] == subject


@pytest.mark.parametrize("value", [" leading", "trailing ", "two  spaces", "ü  ü", " ", "a "])
def test_whitespace_that_is_text_stays_text(value: str) -> None:
    """Callers pass `one_line` values, but a space fold_header is given is kept."""
    header = fold_header("Subject", value)
    assert_within_limits(header)
    assert rfc2047(unfolded(header, "Subject")) == value


def test_an_ascii_subject_is_not_encoded() -> None:
    assert fold_header("Subject", "Counting Life in Tide Pools") == (
        b"Subject: Counting Life in Tide Pools\r\n"
    )
    assert fold_header("Date", "Sat, 08 Jun 2024 07:00:00 +0000") == (
        b"Date: Sat, 08 Jun 2024 07:00:00 +0000\r\n"
    )
    long = fold_header("Subject", " ".join(["tide"] * 30))
    assert_within_limits(long)
    assert b"=?" not in long and unfolded(long, "Subject") == " ".join(["tide"] * 30)


def test_the_french_title_end_to_end(sample_site: Path) -> None:
    """The reproduction: `render --format eml` of a post with the title."""
    (sample_site / "posts" / "2025-01-20-french.md").write_text(
        f'---\ntitle: "{FRENCH}"\ndate: 2025-01-20\n---\nbody\n', encoding="utf-8"
    )
    result = CliRunner().invoke(main, ["render", "french", "--format", "eml"])
    assert result.exit_code == 0, result.stderr
    raw = result.stdout_bytes
    head = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    subject = re.search(rb"^Subject:.*?\r\n(?! )", head, re.MULTILINE | re.DOTALL)
    assert subject is not None
    assert_within_limits(subject.group(0))
    assert rfc2047(unfolded(subject.group(0), "Subject")) == FRENCH
    assert email.message_from_bytes(raw, policy=email.policy.default)["Subject"] == FRENCH


# --------------------------------------------------------------------------- From, Reply-To


@pytest.mark.parametrize("name", ["From", "Reply-To"])
def test_generated_display_names_read_back_exactly(name: str) -> None:
    """From and Reply-To went through the same policy folding: the same lost
    spaces, and a long quoted ASCII name lost its quotes ("Doe, Jane ...")."""
    for title in TITLES[::3]:
        config = str(Address(display_name=title, addr_spec="letters@example.com"))
        # What the configuration says, as Python reads it (an "=?...?=" in a
        # quoted string is decoded there: reading the setting, not folding it).
        setting = email.policy.default.header_factory(name, config)
        if setting.defects:
            continue  # "=?" in a quoted string: refused as a setting, tested elsewhere
        want = setting.addresses[0]
        header = fold_address(name, config, "email.from")
        assert_within_limits(header)
        value = unfolded(header, name)
        phrase, addr = value.rsplit(" ", 1)
        assert addr == "<letters@example.com>"
        if not phrase.startswith('"'):  # quoted by the policy: no encoded words
            assert rfc2047(phrase) == want.display_name, header
        (got,) = python_reads(header)[name].addresses
        assert got.addr_spec == "letters@example.com"
        if not _ADJACENT_ENCODED_WORDS.search(value):
            # Python's address parser reads the whitespace between two encoded
            # words as a space (against RFC 2047 §6.2): only without them.
            assert got.display_name == want.display_name, header


def test_the_french_title_as_a_from_name() -> None:
    config = str(Address(display_name=FRENCH, addr_spec="letters@example.com"))
    header = fold_address("From", config, "email.from")
    assert_within_limits(header)
    phrase = unfolded(header, "From").rsplit(" ", 1)[0]
    assert rfc2047(phrase) == FRENCH
    assert python_reads(header)["From"].addresses[0].display_name == FRENCH


def test_a_long_quoted_ascii_name_keeps_its_meaning() -> None:
    """The policy folded `"Doe, Jane Doe, Jane …"` without its quotes: a list
    of addresses, no longer one name."""
    display = ", ".join(["Doe, Jane"] * 10)
    header = fold_address("From", f'"{display}" <a@example.com>', "email.from")
    assert_within_limits(header)
    (got,) = python_reads(header)["From"].addresses
    assert (got.display_name, got.addr_spec) == (display, "a@example.com")


def test_short_from_names_are_written_as_before() -> None:
    assert fold_address("From", "Tide Notes <a@example.com>", "k") == (
        b"From: Tide Notes <a@example.com>\r\n"
    )
    assert fold_address("From", '"Doe, Jane" <a@example.com>', "k") == (
        b'From: "Doe, Jane" <a@example.com>\r\n'
    )
    assert fold_address("Reply-To", "a@example.com, b@example.com", "k") == (
        b"Reply-To: a@example.com, b@example.com\r\n"
    )


def test_several_addresses_with_encoded_names() -> None:
    value = f'"{FRENCH}" <a@example.com>, Zoë <b@bücher.example>, c@example.com'
    header = fold_address("Reply-To", value, "email.reply_to")
    assert_within_limits(header)
    got = python_reads(header)["Reply-To"].addresses
    assert [a.addr_spec for a in got] == [
        "a@example.com",
        "b@xn--bcher-kva.example",
        "c@example.com",
    ]
    assert [a.display_name for a in got] == [FRENCH, "Zoë", ""]


# --------------------------------------------------------------------------- To, List-Id


def test_generated_to_names_read_back_exactly() -> None:
    """To is written by `format_address` (not the policy): the same check."""
    for title in TITLES[1::3]:
        if title.isascii() and "=?" not in title:
            continue  # a quoted string or atoms: no encoded words
        header = f"To: {format_address(title, 'reader@example.com')}\r\n".encode()
        assert_within_limits(header)
        value = unfolded(header, "To")
        phrase, addr = value.rsplit(" ", 1)
        assert addr == "<reader@example.com>"
        assert rfc2047(phrase) == title, header
        assert python_reads(header)["To"].addresses[0].addr_spec == "reader@example.com"


def test_generated_list_titles_read_back_exactly() -> None:
    """List-Id's title is encoded whole or folded at spaces by `list_id_header`;
    Python reads List-Id as unstructured text (adjacent encoded words joined)."""
    base = make_settings()
    for title in TITLES[2::3]:
        lists = {"everything": ListSettings(name="everything", title=title)}
        header = list_id_header(replace(base, lists=lists), "everything")
        assert_within_limits(header)
        value = unfolded(header, "List-Id")
        phrase, ident = value.rsplit(" ", 1)
        assert ident == "<everything.tides.example.com>"
        if phrase.startswith('"'):
            assert email.utils.unquote(phrase) == title
            assert python_reads(header)["List-Id"] == value
        else:
            assert rfc2047(phrase) == title, header
            assert python_reads(header)["List-Id"] == f"{title} {ident}", header


# --------------------------------------------------------------------------- quoted-printable


def _line(rng: random.Random) -> str:
    """One line of a body: often 73-80 characters (where the soft break fell
    at 77), some long, with "=", non-ASCII, tabs and trailing spaces."""
    length = rng.choice([rng.randint(73, 80), rng.randint(0, 72), rng.randint(81, 400)])
    alphabet = rng.choice(["a", "ab =", "aé", "a=", "日本", "x\t y", "🎉a", ".a"])
    line = "".join(rng.choice(alphabet) for _ in range(length))
    return line + rng.choice(["", "", " ", "  ", "\t", "="])


def bodies(count: int, seed: int) -> list[str]:
    """Bodies of generated lines (LF or CRLF), with placeholders here and there."""
    rng = random.Random(seed)
    out = [
        "a" * 76 + PLACEHOLDERS["name"],  # the 77-character line
        "a" * 73 + "=" + PLACEHOLDERS["email"],  # "=3D" ends it at 76: cut before it
        "a" * 70 + "é" + PLACEHOLDERS["email"],  # "=C3=A9" ends it at 76
        "a" * 75 + "é" + PLACEHOLDERS["name"] + "tail",
        " " * 76 + PLACEHOLDERS["name"],
        "=" * 30 + PLACEHOLDERS["unsubscribe_url"] + "=" * 30,
        "a" * 75 + " \nnext",  # b2a_qp escapes the trailing space after measuring: 78
        "a" * 74 + "\t\r\nnext\n",
    ]
    placeholders = list(PLACEHOLDERS.values())
    while len(out) < count:
        lines = [_line(rng) for _ in range(rng.randint(1, 12))]
        for i in rng.sample(range(len(lines)), rng.randint(0, min(4, len(lines)))):
            cut = rng.randint(0, len(lines[i]))
            lines[i] = lines[i][:cut] + rng.choice(placeholders) + lines[i][cut:]
        out.append(rng.choice(["\n", "\r\n"]).join(lines) + rng.choice(["", "\n", "\r\n"]))
    return out


BODIES = bodies(800, seed=2045)
# One value per placeholder, of the lengths that fill a line: b2a_qp left a
# 76-character value as it was, and the soft break after it made 77.
VALUES = {
    PLACEHOLDERS["email"]: "r" * 64 + "@example.com",  # 76 characters
    PLACEHOLDERS["name"]: "Zoë Ünal " * 9 + "=",
    PLACEHOLDERS["unsubscribe_url"]: "https://news.example.test/unsubscribe/" + "t" * 38,
    PLACEHOLDERS["preferences_url"]: "https://news.example.test/preferences/" + "p=" * 20,
}


def encoded_body(content: str, kind: str) -> bytes:
    """`content` as a message carries it: `_qp_segments`' constants, each slot
    filled by `_qp_value` as `personalise` fills it (with `VALUES`)."""
    values = {slot: VALUES[p] for p, slot in _BODY_SLOTS[kind].items()}
    out = []
    for seg in _qp_segments(content, _BODY_SLOTS[kind]):
        out.append(seg if isinstance(seg, bytes) else _qp_value(values[seg].encode()))
    return b"".join(out)


def expected_text(content: str) -> bytes:
    """What a reader decodes: the values in place, CRLF line ends (RFC 2046 §4.1.1)."""
    for placeholder, value in VALUES.items():
        content = content.replace(placeholder, value)
    return content.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


@pytest.mark.parametrize("kind", ["text", "html"])
def test_generated_bodies_stay_within_76_and_decode_exactly(kind: str) -> None:
    """RFC 2045 §6.7: a line is at most 76 characters, the soft break's "="
    included; `_qp_segments` appended it to a 76-character line."""
    for content in BODIES:
        body = encoded_body(content, kind)
        lines = body.split(b"\r\n")
        assert b"\n" not in body.replace(b"\r\n", b"") and b"\r" not in body.replace(b"\r\n", b"")
        assert max(len(line) for line in lines) <= 76, [ln for ln in lines if len(ln) > 76]
        want = expected_text(content)
        assert quopri.decodestring(body) == want
        part = email.message_from_bytes(
            b'Content-Type: text/plain; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + body,
            policy=email.policy.default,
        )
        assert part.get_payload(decode=True) == want


@pytest.mark.parametrize("length", range(70, 82))
def test_a_value_of_any_length_leaves_room_for_its_soft_break(length: int) -> None:
    for value in ["v" * length, "v" * (length - 2) + "=x", "é" * (length // 2)]:
        encoded = _qp_value(value.encode()) + b"=\r\n"  # as the slot sits in a part
        assert all(len(line) <= 76 for line in encoded.split(b"\r\n")), encoded
        assert quopri.decodestring(encoded) == value.encode()


def test_the_77_character_line_end_to_end(sample_site: Path) -> None:
    """The reproduction: a post titled "T" with the slug pppppppp put
    `…Field Notes</a> =C2=B7 <a href=3D"=` on a line of 77 characters."""
    (sample_site / "posts" / "2025-01-15-pppppppp.md").write_text(
        "---\ntitle: T\ndate: 2025-01-15\n---\nbody\n", encoding="utf-8"
    )
    runner = CliRunner()
    result = runner.invoke(main, ["render", "pppppppp", "--format", "eml"])
    assert result.exit_code == 0, result.stderr
    raw = result.stdout_bytes
    for line in raw.split(b"\r\n"):
        # List-Unsubscribe is one line on purpose (Gmail ignores a folded one).
        assert len(line) <= 78 or line.startswith(b"List-Unsubscribe: "), line
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage) and not msg.defects
    html_part, text_part = msg.get_body(("html",)), msg.get_body(("plain",))
    assert html_part is not None and text_part is not None
    for part in (html_part, text_part):
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        encoded = part.get_payload(decode=False).encode("ascii")
        assert all(len(line) <= 76 for line in encoded.splitlines()), part.get_content_type()
    html = runner.invoke(main, ["render", "pppppppp", "--format", "html"]).stdout
    assert html_part.get_content().replace("\r\n", "\n").rstrip() == html.rstrip()
