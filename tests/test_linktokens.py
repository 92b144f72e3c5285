"""Confirm and preferences tokens: HMAC with a purpose, strict decoding, expiry."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli import main
from newsletter.email.linktokens import (
    make_confirm_token,
    make_preferences_token,
    verify_confirm_token,
    verify_preferences_token,
)

SECRET = b"token-test-secret"
UID = "0123456789abcdef0123456789abcdef"
LATER = datetime(2030, 1, 1, tzinfo=UTC)


def test_round_trips() -> None:
    claim = verify_confirm_token(SECRET, make_confirm_token(SECRET, UID, LATER))
    assert claim is not None and claim.nonce == UID and claim.expires_at == LATER
    assert not claim.expired(LATER - timedelta(seconds=1)) and claim.expired(LATER)
    assert verify_preferences_token(SECRET, make_preferences_token(SECRET, UID)) == UID


def test_one_kind_never_passes_for_the_other() -> None:
    assert verify_confirm_token(SECRET, make_preferences_token(SECRET, UID)) is None
    assert verify_preferences_token(SECRET, make_confirm_token(SECRET, UID, LATER)) is None


def test_another_secret_or_any_changed_character_is_refused() -> None:
    token = make_preferences_token(SECRET, UID)
    assert verify_preferences_token(b"other", token) is None
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i in range(len(token)):
        for c in (alphabet[(alphabet.index(token[i]) + 1) % 64],):
            assert verify_preferences_token(SECRET, token[:i] + c + token[i + 1 :]) is None


def test_decoding_is_strict() -> None:
    token = make_preferences_token(SECRET, UID)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    padded = base64.urlsafe_b64encode(raw).decode()
    standard = base64.b64encode(raw).decode()
    for bad in (padded if padded != token else token + "=", token + " ", token + "\n",
                standard.replace("+", "-") + "+/", " " + token, token[:-1], "", "é" * 30):  # fmt: skip
        assert verify_preferences_token(SECRET, bad) is None, bad
    # A confirm token's last character carries 2 unused bits: only the
    # canonical spelling passes (one token, one spelling).
    confirm = make_confirm_token(SECRET, UID, LATER)
    raw = base64.urlsafe_b64decode(confirm + "=" * (-len(confirm) % 4))
    assert len(raw) % 3 == 2
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = confirm[:-1] + alphabet[alphabet.index(confirm[-1]) ^ 1]
    assert base64.urlsafe_b64decode(twin + "=" * (-len(twin) % 4)) == raw  # same bytes
    assert verify_confirm_token(SECRET, confirm) is not None
    assert verify_confirm_token(SECRET, twin) is None


def test_snippet_prints_an_accessible_form_without_scripts(tmp_path: Path) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text(
        '[web]\npublic_url = "https://news.example.com/"\n'
        '[lists.letters]\ntitle = "Letters"\npublic = true\n'
        '[lists.digest]\ntitle = "Weekly"\npublic = true\n'
        '[lists.staff]\ntitle = "Staff"\n'
    )
    runner = CliRunner()
    one = runner.invoke(main, ["--config", str(config), "snippet", "--list", "letters"])
    assert one.exit_code == 0, one.output
    html = one.stdout
    assert 'action="https://news.example.com/subscribe"' in html
    assert '<input type="hidden" name="list" value="letters">' in html
    assert '<label for="newsletter-email">' in html and 'id="newsletter-email"' in html
    assert 'type="email" required autocomplete="email"' in html
    assert "<p hidden>" in html and 'name="website"' in html  # the honeypot
    assert "<script" not in html and "style=" not in html
    two = runner.invoke(
        main, ["--config", str(config), "snippet", "--list", "letters", "--list", "digest"]
    )
    assert two.stdout.count('type="checkbox"') == 2 and "<legend>Lists</legend>" in two.stdout
    private = runner.invoke(main, ["--config", str(config), "snippet", "--list", "staff"])
    assert private.exit_code == 1
    assert "lists.staff.public: the list is not public" in private.stderr
    unknown = runner.invoke(main, ["--config", str(config), "snippet", "--list", "nope"])
    assert unknown.exit_code == 1 and "unknown list 'nope'" in unknown.stderr
    assert runner.invoke(main, ["snippet", "--help"]).exit_code == 0


def test_the_snippets_comment_survives_a_title_with_dashes(tmp_path: Path) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text(
        '[site]\ntitle = "Notes --> <b>bold</b> -- more"\n'
        '[web]\npublic_url = "https://news.example.com/"\n'
        '[lists.letters]\ntitle = "Letters"\npublic = true\n'
    )
    out = CliRunner().invoke(main, ["--config", str(config), "snippet", "--list", "letters"])
    assert out.exit_code == 0, out.output
    comment, _, form = out.stdout.partition("\n")
    # One comment on the first line, ended only at its end: the title's
    # "-->" ended it there and printed the rest of the title on the page.
    assert comment.startswith("<!-- ") and comment.endswith(" -->")
    assert comment.count("--") == 2 and "<form" in form


def test_a_list_named_twice_is_offered_once(tmp_path: Path) -> None:
    """`--list sample --list sample` printed two identical checkboxes."""
    config = tmp_path / "newsletter.toml"
    config.write_text(
        '[web]\npublic_url = "https://news.example.com/"\n'
        '[lists.letters]\ntitle = "Letters"\npublic = true\n'
        '[lists.digest]\ntitle = "Weekly"\npublic = true\n'
    )
    runner = CliRunner()
    twice = runner.invoke(
        main, ["--config", str(config), "snippet", "--list", "letters", "--list", "letters"]
    )
    assert twice.exit_code == 0, twice.output
    once = runner.invoke(main, ["--config", str(config), "snippet", "--list", "letters"])
    assert twice.stdout == once.stdout  # one list: the hidden field, no checkbox
    mixed = runner.invoke(
        main,
        ["--config", str(config), "snippet", *("--list", "digest", "--list", "letters") * 2],
    )
    assert mixed.stdout.count('type="checkbox"') == 2
    assert mixed.stdout.index('value="digest"') < mixed.stdout.index('value="letters"')
    assert "(digest, letters)" in mixed.stdout.splitlines()[0]


def test_the_snippet_says_which_pages_it_works_on(tmp_path: Path) -> None:
    """A page with `Referrer-Policy: no-referrer` or `same-origin` posts the
    form as `Origin: null`, which the server refuses (docs/web.md): the
    owner pasting the form is told so beside it."""
    config = tmp_path / "newsletter.toml"
    config.write_text(
        '[web]\npublic_url = "https://news.example.com/"\n'
        '[lists.letters]\ntitle = "Letters"\npublic = true\n'
    )
    out = CliRunner().invoke(main, ["--config", str(config), "snippet", "--list", "letters"])
    assert out.exit_code == 0, out.output
    head = out.stdout.split("<form", 1)[0]
    assert "no-referrer" in head and "same-origin" in head
    assert "strict-origin-when-cross-origin" in head


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.comments: list[str] = []
        self.text: list[str] = []

    def handle_comment(self, data: str) -> None:
        self.comments.append(data)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def comments_and_text(html: str) -> tuple[list[str], str]:
    """The comments in `html` and the text a browser would show of it."""
    reader = _Reader()
    reader.feed(html)
    reader.close()
    return reader.comments, "".join(reader.text)


@pytest.mark.parametrize(
    "title",
    ["Notes --->", "Notes ---!> and more", "A -- B", "----", "-->", "<!-- x", "ends -", "x--!>"],
)
def test_the_snippets_comment_is_one_comment_whatever_the_title(tmp_path: Path, title: str) -> None:
    """ "--" became "- -" in one pass, so "---" left "- --": a title with
    "--->" or "---!>" ended the comment early and the rest of it showed as
    text on the blog page.  No "--" at all is left in the comment's text
    (HTML: no "-->", "--!>" or "<!--" inside, no ">" or "->" at its start,
    no "-" at its end)."""
    config = tmp_path / "newsletter.toml"
    escaped = title.replace("\\", "\\\\").replace('"', '\\"')
    config.write_text(
        f'[site]\ntitle = "{escaped}"\n'
        '[web]\npublic_url = "https://news.example.com/"\n'
        '[lists.letters]\ntitle = "Letters"\npublic = true\n'
    )
    out = CliRunner().invoke(main, ["--config", str(config), "snippet", "--list", "letters"])
    assert out.exit_code == 0, out.output
    head = out.stdout.split("<form", 1)[0]

    comments, text = comments_and_text(head)
    assert text.strip() == ""  # nothing of the title shows on the page
    assert len(comments) == 2
    for body in comments:
        assert "--" not in body and not body.startswith((">", "->")) and not body.endswith("-")
