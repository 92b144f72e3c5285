"""The lint rules one by one, on hand-made emails."""

from __future__ import annotations

from newsletter.email.render import PLACEHOLDERS, RenderedEmail
from newsletter.web.lint import GMAIL_CLIP_BYTES, Finding, lint_email

UNSUB = PLACEHOLDERS["unsubscribe_url"]
FOOTER = f'<p><a href="{UNSUB}">Unsubscribe</a></p>'


def _email(body: str, subject: str = "A fine subject", text: str | None = None) -> RenderedEmail:
    html = f"<html><body>{body}{FOOTER}</body></html>"
    return RenderedEmail("p", "l", subject, html, text if text is not None else f"Bye {UNSUB}")


def _codes(findings: tuple[Finding, ...]) -> list[tuple[str, str]]:
    return [(f.level, f.code) for f in findings if f.code != "size"]


def test_a_clean_email_has_only_the_size_note() -> None:
    body = '<img src="https://example.com/a.png" alt="A" width="600"><a href="https://example.com/">x</a>'
    rendered = _email(body)
    findings = lint_email(rendered, rendered.html)
    assert _codes(findings) == []
    assert findings[0] == Finding("info", "size", findings[0].message)


def test_size_over_the_gmail_clip_is_an_error() -> None:
    rendered = _email("")
    big = "x" * (GMAIL_CLIP_BYTES + 1)
    size = next(f for f in lint_email(rendered, big) if f.code == "size")
    assert size.level == "error"
    assert "Gmail clips above 102 KB" in size.message
    small = next(f for f in lint_email(rendered, "x" * GMAIL_CLIP_BYTES) if f.code == "size")
    assert small.level == "info"


def test_images_need_alt_and_width() -> None:
    body = (
        '<img src="https://example.com/1.png">'
        '<img src="https://example.com/2.png" alt="" style="width: 100px">'
        '<img src="https://example.com/3.png" alt="three" width="10">'
    )
    findings = [f for f in lint_email(_email(body), "") if f.code.startswith("img")]
    assert [(f.code, f.message.rsplit("/", 1)[-1]) for f in findings] == [
        ("img-alt", "1.png"),
        ("img-width", "1.png"),
    ]


def test_relative_and_http_urls() -> None:
    body = (
        '<a href="/about/">a</a><a href="page.html">b</a><a href="http://example.com/x">c</a>'
        '<img src="images/x.png" alt="x" width="1"><a href="mailto:a@example.com">m</a>'
        '<a href="#top">t</a><img src="cid:logo" alt="l" width="1">'
    )
    findings = lint_email(_email(body), "")
    assert [(f.level, f.code, f.message) for f in findings if f.code in ("relative", "http")] == [
        ("error", "relative", "relative image URL: images/x.png"),
        ("error", "relative", "relative link URL: /about/"),
        ("error", "relative", "relative link URL: page.html"),
        ("warning", "http", "link over plain http://: http://example.com/x"),
    ]


def test_missing_unsubscribe_link_in_either_part() -> None:
    rendered = RenderedEmail("p", "l", "S", "<html><body><p>Hi</p></body></html>", "Hi")
    messages = [f.message for f in lint_email(rendered, "") if f.code == "unsubscribe"]
    assert messages == [
        "no unsubscribe link in the HTML part",
        "no unsubscribe link in the text part",
    ]
    # The placeholder as plain text is not a link.
    as_text = _email("").html.replace(f'<a href="{UNSUB}">Unsubscribe</a>', UNSUB)
    rendered = RenderedEmail("p", "l", "S", as_text, f"x {UNSUB}")
    assert [f.message for f in lint_email(rendered, "") if f.code == "unsubscribe"] == [
        "no unsubscribe link in the HTML part"
    ]


def test_long_subject() -> None:
    assert not [f for f in lint_email(_email("", "s" * 80), "") if f.code == "subject"]
    (finding,) = [f for f in lint_email(_email("", "s" * 81), "") if f.code == "subject"]
    assert finding.message == "subject is 81 characters; inboxes cut it after about 80"


def test_unrendered_liquid_in_each_part() -> None:
    rendered = _email(
        "<p>{% include note.html %}</p>", subject="{{ page.title }}", text=f"{{{{ x }}}} {UNSUB}"
    )
    messages = [f.message for f in lint_email(rendered, "") if f.code == "liquid"]
    assert len(messages) == 3
    assert messages[0] == "unrendered Liquid in the subject: {{ page.title }}"
    assert messages[1].startswith("unrendered Liquid in the HTML: {% include note.html %}")
    assert messages[2].startswith("unrendered Liquid in the text: {{ x }}")


def test_post_and_render_warnings_are_listed_and_errors_come_first() -> None:
    rendered = RenderedEmail(
        "p", "l", "S", "<html><body><a href='/x'>x</a></body></html>", "t", ("theme warning",)
    )
    findings = lint_email(rendered, "", ("front matter: unknown key 'tagz'",))
    levels = [f.level for f in findings]
    assert levels == sorted(levels, key=["error", "warning", "info"].index)
    posts = [f.message for f in findings if f.code == "post"]
    assert posts == ["front matter: unknown key 'tagz'", "theme warning"]


def test_unparseable_html_is_reported() -> None:
    rendered = RenderedEmail("p", "l", "S", "", f"t {UNSUB}")
    assert ("error", "html") in _codes(lint_email(rendered, ""))
