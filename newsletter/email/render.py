"""Post × list → `RenderedEmail`: Jinja2 templates, premailer inlining, text part.

Rendering happens once per mailing (post × list, or a digest × list).
Per-recipient values are left as the tokens in `PLACEHOLDERS`; `message`
substitutes them into pre-serialised bytes for each recipient, so a mailing
to 10,000 people renders once.

Beside it: `theme` (the Jinja2 environments and filters), `content` (the
post's HTML made for an inbox, the preheader), `inline` (premailer) and
`textpart` (the plain-text part's tidying and wrapping).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from newsletter.config import ListSettings, Settings
from newsletter.email import content, images, inlinecache
from newsletter.email.inline import inline_css
from newsletter.email.rendered import (
    PLACEHOLDERS,
    RenderedEmail,
    one_line,
)
from newsletter.email.textpart import tidy_text
from newsletter.email.theme import (
    jinja_message,
    long_date,
    month_name,
    render_template,
    subject_environment,
    template_environment,
)
from newsletter.errors import NewsletterError, RenderError, TemplateError
from newsletter.posts import text as posttext
from newsletter.posts.collection import Post

# premailer (with cssutils and lxml) and `markup` (Markdown, lxml) are imported
# where they are used: a command that only reads a cached render, or a
# message's placeholders, never needs them.

__all__ = [
    "PLACEHOLDERS",
    "RenderedEmail",
    "archive_url",
    "digest_archive_url",
    "inline_css",
    "render_digest",
    "render_email",
    "render_subject",
    "template_environment",
]

# Gmail clips a message whose HTML exceeds ~102 KB behind "View entire message",
# hiding the footer and its unsubscribe link.
GMAIL_CLIP_BYTES = 102 * 1024
DEFAULT_SUBJECT = "{{ post.title }}"
DEFAULT_DIGEST_SUBJECT = (
    "{{ list.title }}: {{ posts | length }} new post{{ '' if posts | length == 1 else 's' }}"
)


@dataclass(frozen=True)
class RecipientFields:
    """What a template sees as `recipient`: placeholders until `message` fills them."""

    email: str = PLACEHOLDERS["email"]
    name: str = PLACEHOLDERS["name"]
    unsubscribe_url: str = PLACEHOLDERS["unsubscribe_url"]
    preferences_url: str = PLACEHOLDERS["preferences_url"]


@dataclass(frozen=True)
class Hero:
    """The lead image: its URL, the alt text of its own, its size when known."""

    src: str
    alt: str
    width: int
    height: int | None


@dataclass(frozen=True)
class DigestItem:
    post: Post
    content_html: str
    content_text: str
    hero: Hero | None = None
    reading_minutes: int = 1


# --------------------------------------------------------------------------- public API


def render_email(
    post: Post, settings: Settings, mailing_list: ListSettings, *, cache: bool = True
) -> RenderedEmail:
    """One post for one list: subject, inlined HTML and text, with placeholders
    (`cache=False`: compile the templates and inline the CSS again)."""
    env = template_environment(settings.email.templates_dir, _kept(settings, "jinja", cache))
    full = settings.email.content == "full"
    content_html = post.body_html if full else post.excerpt_html
    content_text = content.as_text(content_html, 2, None if full else post.excerpt_text)
    post = _with_safe_title(post)
    context = {
        **_common_context(settings, mailing_list, [post]),
        "post": post,
        "content_html": Markup(
            content.for_email(content_html, settings, top_heading=2, page_url=post.url)
        ),
        "content_text": content_text,
        "is_excerpt": not full,
        "archive_url": archive_url(settings, post.post_id),
        "hero": _hero(post, settings, images.CONTAINER_WIDTH),
        "reading_minutes": reading_minutes(post),
    }
    subject = render_subject(settings.email.subject or DEFAULT_SUBJECT, env, context)
    context.update(_intro(post, subject, content_html, context["reading_minutes"]))
    context["preheader_padding"] = content.preheader_padding(context["preheader"])
    html = render_template(env, "email.html.j2", context)
    text = render_template(env, "email.txt.j2", context)
    return _finish(
        post.post_id, mailing_list.name, subject, html, text, _kept(settings, "inlined", cache)
    )


def render_digest(
    posts: Sequence[Post],
    settings: Settings,
    mailing_list: ListSettings,
    *,
    subject_template: str = DEFAULT_DIGEST_SUBJECT,
    archive_url: str | None = None,
    cache: bool = True,
) -> RenderedEmail:
    """Several posts (oldest first) in one email, from digest.html.j2 / digest.txt.j2.

    `post_id` of the result is the posts' ids joined with "+", which is stable
    for the same set of posts.  `archive_url` is the "View in browser" page
    (`digest_archive_url` of the mailing); a preview has none.
    """
    if not posts:
        raise RenderError("a digest needs at least one post", key=f"lists.{mailing_list.name}")
    env = template_environment(settings.email.templates_dir, _kept(settings, "jinja", cache))
    ordered = [_with_safe_title(p) for p in sorted(posts, key=lambda p: p.date)]
    items = [
        DigestItem(
            p,
            Markup(content.for_email(p.excerpt_html, settings, top_heading=3, page_url=None)),
            content.as_text(p.excerpt_html, 3, p.excerpt_text),
            _hero(p, settings, images.CONTENT_WIDTH),
            reading_minutes(p),
        )
        for p in ordered
    ]
    context = {
        **_common_context(settings, mailing_list, ordered),
        "posts": ordered,
        "items": items,
        "archive_url": archive_url,
        "date_range": _date_range(ordered[0].date, ordered[-1].date),
        "preheader": content.preheader(" · ".join(p.title for p in ordered)),
    }
    context["preheader_padding"] = content.preheader_padding(context["preheader"])
    subject = render_subject(subject_template, env, context)
    html = render_template(env, "digest.html.j2", context)
    text = render_template(env, "digest.txt.j2", context)
    post_id = "+".join(p.post_id for p in ordered)
    return _finish(
        post_id, mailing_list.name, subject, html, text, _kept(settings, "inlined", cache)
    )


def archive_url(settings: Settings, post_id: str) -> str:
    """The public "view in browser" page of a post (served by `newsletter serve`).

    Percent-encoded as the archive index's links are (Jinja's `urlencode`):
    a "#", "?" or "%" in a post id would end or garble the path; "/" stays,
    for posts in subfolders (`news/bees`).
    """
    from urllib.parse import quote

    return f"{settings.web.public_base}/archive/{quote(post_id, safe='/')}"


def digest_archive_url(settings: Settings, mailing_id: int) -> str:
    """The public page of one digest mailing, as it was sent: a digest is
    archived whole, by its mailing, since its set of posts is the mailing's."""
    return f"{settings.web.public_base}/archive/digest/{mailing_id}"


def render_subject(template: str, env: jinja2.Environment, context: dict[str, Any]) -> str:
    """The `[email] subject` template rendered to one line of plain text.

    CR and LF can never survive (they would start a new header, RFC 5322
    §2.2); runs of whitespace collapse to one space.
    """
    try:
        raw = subject_environment(env).from_string(template).render(context)
    except jinja2.TemplateError as exc:
        raise TemplateError(f"subject template: {jinja_message(exc)}", key="email.subject") from exc
    except NewsletterError:
        raise
    except Exception as exc:  # an expression failed: {{ post.title + 1 }}
        raise TemplateError(
            f"subject template: {type(exc).__name__}: {exc}", key="email.subject"
        ) from exc
    subject = one_line(raw)
    if not subject:
        raise TemplateError("the subject template renders to nothing", key="email.subject")
    return subject


def _shows_preferences(settings: Settings) -> bool:
    """The "Manage your subscription" link: forced by `[email] preferences_link`,
    else shown when some list is public (the page then has lists to offer)."""
    forced = settings.email.preferences_link
    return bool(settings.public_lists) if forced is None else forced


def _common_context(
    settings: Settings, mailing_list: ListSettings, posts: Sequence[Post]
) -> dict[str, Any]:
    recipient = RecipientFields()
    lang = _language(settings, posts)
    return {
        "site": settings.site,
        "list": mailing_list,
        "settings": settings,
        "recipient": recipient,
        "unsubscribe_url": recipient.unsubscribe_url,
        "preferences_url": recipient.preferences_url if _shows_preferences(settings) else None,
        "postal_address": one_line(settings.email.postal_address or "") or None,
        "logo": _logo(settings),
        "lang": lang,
        "dir": "rtl" if lang.split("-")[0].lower() in _RTL_LANGUAGES else "ltr",
    }


def _language(settings: Settings, posts: Sequence[Post]) -> str:
    """The posts' own `lang` (front matter, Jekyll's `page.lang`) when they
    share one, else the site's: a multilingual site has a list per language."""
    tags = {p.extra.get("lang") for p in posts}
    lang = tags.pop() if len(tags) == 1 else None
    if isinstance(lang, str) and _LANGUAGE_TAG.fullmatch(lang):
        return lang
    return settings.site.lang


_LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*")
# Languages written right to left (the primary subtag of a BCP 47 tag).
_RTL_LANGUAGES = frozenset(
    {"ar", "arc", "ckb", "dv", "fa", "he", "ks", "ps", "sd", "ug", "ur", "yi"}
)
_WORDS_PER_MINUTE = 230


def reading_minutes(post: Post) -> int:
    """Minutes to read the whole post at ~230 words a minute, at least 1."""
    from newsletter.posts import markup

    words = len(markup.html_to_text(post.body_html).split())
    return max(1, round(words / _WORDS_PER_MINUTE))


def _absolute(settings: Settings, ref: str) -> str:
    if re.match(r"[a-z][a-z0-9+.-]*://", ref, re.I):
        return ref
    if ref.startswith("//"):  # protocol-relative: the site's scheme
        return f"{settings.site.url.split(':', 1)[0]}:{ref}"
    return settings.site.home.rstrip("/") + "/" + ref.lstrip("/")


def _logo(settings: Settings) -> Hero | None:
    if not settings.email.logo:
        return None
    src = _absolute(settings, settings.email.logo)
    size = images.sized_image(src, settings, _LOGO_WIDTH)
    width, height = size if size is not None else (_LOGO_WIDTH, None)
    return Hero(src, settings.site.title, width, height)


_LOGO_WIDTH = 200


def _hero(post: Post, settings: Settings, cap: int) -> Hero | None:
    """The lead image; its alt is the image's own (front matter image_alt or
    image.alt) and empty when there is none: the title follows right below,
    so repeating it would only be read twice."""
    if not post.image:
        return None
    alt = "" if one_line(post.image_alt) == one_line(post.title) else post.image_alt
    size = images.sized_image(post.image, settings, cap)
    if size is None:
        return Hero(post.image, alt, cap, None)
    return Hero(post.image, alt, size[0], size[1])


def _intro(post: Post, subject: str, content_html: str, minutes: int) -> dict[str, Any]:
    """Subtitle and preheader that never repeat the subject: a description
    that contains the title (or the subject) is dropped, and the preheader
    comes from the first sentence of the excerpt instead; from the post's
    when the excerpt has none (an image), else from the byline, so the inbox
    never previews the logo's alt text and the footer."""
    # Front matter text with Markdown, HTML or entities: plain, as the title.
    description = posttext.title_text(posttext.title_html(post.description or ""))
    said = [content.normal(post.title), content.normal(subject)]
    repeats = bool(description) and any(s and s in content.normal(description) for s in said)
    if description and not repeats:
        return {"subtitle": description, "preheader": content.preheader(description)}
    sentence = content.first_fresh_sentence(content.prose(content_html), said)
    if not sentence and content_html != post.body_html:
        sentence = content.first_fresh_sentence(content.prose(post.body_html), said)
    if not sentence:
        authors = " and ".join(a.name for a in post.authors)
        sentence = " · ".join(
            x
            for x in (authors and f"By {authors}", long_date(post.date), f"{minutes} min read")
            if x
        )
    return {"subtitle": None, "preheader": content.preheader(sentence)}


def _date_range(first: datetime, last: datetime) -> str:
    if first.date() == last.date():
        return long_date(first)
    if (first.year, first.month) == (last.year, last.month):
        return f"{first.day}–{long_date(last)}"
    if first.year == last.year:
        return f"{first.day} {month_name(first.month)} – {long_date(last)}"
    return f"{long_date(first)} – {long_date(last)}"


def _with_safe_title(post: Post) -> Post:
    """`title_html` comes from front matter: sanitise it like the body."""
    from newsletter.posts import markup

    safe = markup.sanitise_html(post.title_html, post.url)
    return post if safe == post.title_html else replace(post, title_html=safe)


def _kept(settings: Settings, what: str, cache: bool) -> Path | None:
    """Where inlined HTML and compiled templates are kept (`inlinecache`)."""
    return settings.state_dir / what if cache else None


# `{%` and `{{` outside the <style> block (whose text is CSS, not HTML: no
# character reference is read there, and CSS never has either).
_TEMPLATE_MARK = re.compile(r"(<style\b.*?</style>)|\{(?=[%{])", re.S | re.I)


def _no_template_marks(html: str) -> str:
    """A post's literal `{%` or `{{` (a `{% raw %}` block) as `&#123;`, which
    reads the same: lxml, inlining the CSS, wrote the posts' references back
    as `{`, and the preheader (plain text) never had them."""
    return _TEMPLATE_MARK.sub(lambda m: m.group(1) or "&#123;", html)


def _finish(
    post_id: str, list_name: str, subject: str, html: str, text: str, cache: Path | None
) -> RenderedEmail:
    inlined = _no_template_marks(inlinecache.inlined(html, cache, inline_css))
    warnings: list[str] = []
    size = len(inlined.encode("utf-8"))
    if size > GMAIL_CLIP_BYTES:
        warnings.append(
            f"the HTML is {size / 1024:.0f} KB; Gmail clips messages over 102 KB"
            " (the footer and unsubscribe link are hidden)"
        )
    return RenderedEmail(
        post_id=post_id,
        list_name=list_name,
        subject=subject,
        html=inlined,
        text=tidy_text(text),
        warnings=tuple(warnings),
    )
