"""Post × list → `RenderedEmail`: Jinja2 templates, premailer inlining, text part.

Rendering happens once per mailing (post × list, or a digest × list).
Per-recipient values are left as the tokens in `PLACEHOLDERS`; `message`
substitutes them into pre-serialised bytes for each recipient, so a mailing
to 10,000 people renders once.

Templates come from `[email] templates_dir` when set, file by file falling
back to the default theme shipped as the package `newsletter.templates`
(the repository's top-level `templates/`).
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import re
import textwrap
import traceback
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from newsletter.config import ListSettings, Settings
from newsletter.email import images, inlinecache
from newsletter.email.rendered import (
    PLACEHOLDERS,
    RenderedEmail,
    one_line,
)
from newsletter.errors import NewsletterError, RenderError, TemplateError
from newsletter.posts import text as posttext
from newsletter.posts.collection import Post

# premailer (with cssutils and lxml) and `markup` (Markdown, lxml) are imported
# where they are used: a command that only reads a cached render, or a
# message's placeholders, never needs them.

# Gmail clips a message whose HTML exceeds ~102 KB behind "View entire message",
# hiding the footer and its unsubscribe link.
GMAIL_CLIP_BYTES = 102 * 1024
DEFAULT_SUBJECT = "{{ post.title }}"
DEFAULT_DIGEST_SUBJECT = (
    "{{ list.title }}: {{ posts | length }} new post{{ '' if posts | length == 1 else 's' }}"
)
PREHEADER_CHARS = 140
# Zero-width padding after the preheader stops clients from filling the inbox
# preview with the body text that follows it.
_PREHEADER_PADDING = Markup("&#847;&zwnj;&nbsp;" * 30)

_MONTHS = (
    *("January", "February", "March", "April", "May", "June"),
    *("July", "August", "September", "October", "November", "December"),
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
    content_text = post.excerpt_text
    if full:
        from newsletter.posts import markup  # (lxml: only for a whole post's text)

        content_text = markup.html_to_text(content_html)
    post = _with_safe_title(post)
    context = {
        **_common_context(settings, mailing_list, [post]),
        "post": post,
        "content_html": Markup(_images(content_html, settings)),
        "content_text": content_text,
        "is_excerpt": not full,
        "archive_url": archive_url(settings, post.post_id),
        "hero": _hero(post, settings, images.CONTAINER_WIDTH),
        "reading_minutes": reading_minutes(post),
    }
    subject = render_subject(settings.email.subject or DEFAULT_SUBJECT, env, context)
    context.update(_intro(post, subject, _prose(content_html)))
    html = _render(env, "email.html.j2", context)
    text = _render(env, "email.txt.j2", context)
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
            Markup(_images(p.excerpt_html, settings)),
            p.excerpt_text,
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
        "preheader": _preheader(" · ".join(p.title for p in ordered)),
    }
    subject = render_subject(subject_template, env, context)
    html = _render(env, "digest.html.j2", context)
    text = _render(env, "digest.txt.j2", context)
    post_id = "+".join(p.post_id for p in ordered)
    return _finish(
        post_id, mailing_list.name, subject, html, text, _kept(settings, "inlined", cache)
    )


def archive_url(settings: Settings, post_id: str) -> str:
    """The public "view in browser" page of a post (served by `newsletter serve`)."""
    return f"{settings.web.public_base}/archive/{post_id}"


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
        raw = _subject_environment(env).from_string(template).render(context)
    except jinja2.TemplateError as exc:
        raise TemplateError(
            f"subject template: {_jinja_message(exc)}", key="email.subject"
        ) from exc
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


# --------------------------------------------------------------------------- templates


class ThemeLoader(jinja2.BaseLoader):
    """Loads the default theme from the installed package `newsletter.templates`."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        resource = _theme_files().joinpath(template)
        if "/" in template or "\\" in template or not resource.is_file():
            raise jinja2.TemplateNotFound(template)
        source = resource.read_text(encoding="utf-8")
        if not isinstance(resource, Path):  # inside a zip: cannot change
            return source, str(resource), lambda: True
        # On disk (an editable install): let the preview pick up theme edits.
        mtime = resource.stat().st_mtime

        def uptodate() -> bool:
            try:
                return resource.stat().st_mtime == mtime
            except OSError:
                return False

        return source, str(resource), uptodate


@functools.lru_cache(maxsize=1)
def _theme_files() -> Any:
    """The default theme: the `templates/` beside this package in a source
    checkout (so each git worktree renders with its own theme even when the
    editable install points at another checkout), else the installed
    package `newsletter.templates`."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (
        checkout / "templates" / "_layout.html.j2"
    ).is_file():
        return checkout / "templates"
    return importlib.resources.files("newsletter.templates")


@functools.lru_cache(maxsize=8)
def template_environment(
    templates_dir: Path | None, compiled: Path | None = None
) -> jinja2.Environment:
    """One cached Jinja2 environment per templates folder (templates compile
    once per process; once per change of their source with `compiled`, the
    folder where the compiled code is kept)."""
    loaders: list[jinja2.BaseLoader] = []
    if templates_dir is not None:
        if not templates_dir.is_dir():
            raise TemplateError(
                "templates folder not found", path=templates_dir, key="email.templates_dir"
            )
        loaders.append(jinja2.FileSystemLoader(str(templates_dir)))
    loaders.append(ThemeLoader())
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        # HTML templates escape by default; the text ones must not (& stays &).
        autoescape=jinja2.select_autoescape(["html", "htm", "xml", "html.j2"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        bytecode_cache=inlinecache.compiled_templates(compiled) if compiled else None,
    )
    env.filters["long_date"] = long_date
    env.filters["text_heading"] = text_heading
    return env


def _subject_environment(env: jinja2.Environment) -> jinja2.Environment:
    """The subject is plain text: same filters, no HTML escaping."""
    return env.overlay(autoescape=False)


def long_date(value: datetime) -> str:
    """`4 November 2024`, independent of the machine's locale."""
    return f"{value.day} {_MONTHS[value.month - 1]} {value.year}"


def text_heading(title: str, rule: str = "=") -> str:
    """A plain-text heading: the title wrapped at 72 columns, underlined as
    wide as its longest line (a wide CJK character takes two columns)."""
    lines = textwrap.wrap(title, 72, break_long_words=False, break_on_hyphens=False)
    lines = lines or [title]
    return "\n".join(lines) + "\n" + rule * min(72, max(map(_columns, lines)))


def _columns(text: str) -> int:
    return sum(
        2 if unicodedata.east_asian_width(c) in "WF" else 0 if unicodedata.combining(c) else 1
        for c in text
    )


def _render(env: jinja2.Environment, name: str, context: dict[str, Any]) -> str:
    try:
        return env.get_template(name).render(context)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"template syntax error: {exc.message}", path=exc.filename or name, line=exc.lineno
        ) from exc
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"template not found: {exc.name}", key="email.templates_dir") from exc
    except jinja2.TemplateError as exc:
        path, line = _failing_line(exc, _template_path(env, name))
        raise TemplateError(_jinja_message(exc), path=path, line=line) from exc
    except NewsletterError:
        raise
    except Exception as exc:
        # An expression of the template failed ({{ post.title + 1 }}: a
        # TypeError; an include of itself: a RecursionError): the template's
        # error, at its line, rather than a traceback out of the command.
        path, line = _failing_line(exc, _template_path(env, name))
        raise TemplateError(f"{type(exc).__name__}: {exc}", path=path, line=line) from exc


def _failing_line(exc: BaseException, fallback: str) -> tuple[str, int | None]:
    """The template file and line where `exc` was raised, from Jinja's rewritten traceback.

    Jinja gives each template's frames the template's file name and line
    numbers; the innermost one is where the expression failed (in an included
    template, that one).
    """
    found: tuple[str, int | None] = (fallback, None)
    for frame, line in traceback.walk_tb(exc.__traceback__):
        if _JINJA_FRAME.intersection(frame.f_globals):
            found = (frame.f_code.co_filename, line)
    return found


# Globals Jinja puts in a template's frames: its rewritten ones (jinja2.debug)
# and those of the compiled template code.
_JINJA_FRAME = frozenset(("__jinja_exception__", "__jinja_template__"))


def _template_path(env: jinja2.Environment, name: str) -> str:
    try:
        return env.get_template(name).filename or name
    except jinja2.TemplateError:
        return name


def _jinja_message(exc: jinja2.TemplateError) -> str:
    return str(exc.message or exc.__class__.__name__)


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
        "preheader_padding": _PREHEADER_PADDING,
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


def _images(content_html: str, settings: Settings) -> str:
    return images.add_captions(images.add_sizes(content_html, settings))


def _absolute(settings: Settings, ref: str) -> str:
    if re.match(r"[a-z][a-z0-9+.-]*://", ref, re.I):
        return ref
    if ref.startswith("//"):  # protocol-relative: the site's scheme
        return f"{settings.site.url.split(':', 1)[0]}:{ref}"
    base = settings.site.url.rstrip("/") + "/" + settings.site.baseurl.strip("/")
    return base.rstrip("/") + "/" + ref.lstrip("/")


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


def _normal(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.casefold()).strip()


def _intro(post: Post, subject: str, content_text: str) -> dict[str, Any]:
    """Subtitle and preheader that never repeat the subject: a description
    that contains the title (or the subject) is dropped, and the preheader
    comes from the first sentence of the excerpt instead."""
    # Front matter text with Markdown, HTML or entities: plain, as the title.
    description = posttext.title_text(posttext.title_html(post.description or ""))
    said = [_normal(post.title), _normal(subject)]
    repeats = bool(description) and any(s and s in _normal(description) for s in said)
    subtitle = description if description and not repeats else None
    if subtitle:
        return {"subtitle": subtitle, "preheader": _preheader(subtitle)}
    sentences = re.split(r"(?<=[.!?…])\s+", one_line(content_text))
    fresh = [x for x in sentences if x and _normal(x) not in said and _normal(x)]
    return {"subtitle": None, "preheader": _preheader(" ".join(fresh[:1]) or "")}


_IMG = re.compile(r"<img\b[^>]*>", re.I)
_HREF = re.compile(r"(<a\b[^>]*?)\shref=(\"[^\"]*\"|'[^']*'|[^\s>]*)", re.I)


def _prose(content_html: str) -> str:
    """The content as the inbox preview shows it: the text part's rendering
    without its "[image alt]" and "(URL)" asides."""
    from newsletter.posts import markup

    return markup.html_to_text(_HREF.sub(r"\1", _IMG.sub("", content_html)))


def _date_range(first: datetime, last: datetime) -> str:
    if first.date() == last.date():
        return long_date(first)
    if (first.year, first.month) == (last.year, last.month):
        return f"{first.day}–{long_date(last)}"
    if first.year == last.year:
        return f"{first.day} {_MONTHS[first.month - 1]} – {long_date(last)}"
    return f"{long_date(first)} – {long_date(last)}"


def _with_safe_title(post: Post) -> Post:
    """`title_html` comes from front matter: sanitise it like the body."""
    from newsletter.posts import markup

    safe = markup.sanitise_html(post.title_html, post.url)
    return post if safe == post.title_html else replace(post, title_html=safe)


def _preheader(text: str) -> str:
    text = one_line(text)
    if len(text) <= PREHEADER_CHARS:
        return text
    return text[:PREHEADER_CHARS].rsplit(" ", 1)[0] + "…"


# --------------------------------------------------------------------------- inlining


def inline_css(html: str) -> str:
    """premailer: every rule into style="", @media rules kept in a <style> block.

    No network: the theme's CSS is in the document, and a user's template
    that links a remote stylesheet must not make rendering fetch it.
    """
    from premailer import Premailer

    html = _strip_external_css(html)
    try:
        return str(
            Premailer(
                html,
                allow_network=False,
                allow_loading_external_files=False,
                disable_link_rewrites=True,  # URLs are absolute already
                # The template's width/height attributes are for Outlook; CSS
                # like width:100% must not overwrite them.
                disable_basic_attributes=["width", "height"],
                strip_important=False,
                keep_style_tags=False,
                disable_validation=True,
                cssutils_logging_level=logging.CRITICAL,
            ).transform()
        )
    except Exception as exc:  # premailer/cssutils raise many unrelated types
        raise RenderError(f"cannot inline CSS: {exc}") from exc


_STYLE_BLOCK = re.compile(r"(<style\b[^>]*>)(.*?)(</style>)", re.S | re.I)
_IMPORT = re.compile(r"@import\b[^;]*;?", re.I)
_STYLESHEET_LINK = re.compile(r"<link\b[^>]*\bstylesheet\b[^>]*>", re.I)


def _strip_external_css(html: str) -> str:
    """Remote stylesheets would be fetched by cssutils (`@import`) or by the
    reader's mail client (`<link>`); neither belongs in an email."""
    html = _STYLESHEET_LINK.sub("", html)
    return _STYLE_BLOCK.sub(lambda m: m.group(1) + _IMPORT.sub("", m.group(2)) + m.group(3), html)


def _kept(settings: Settings, what: str, cache: bool) -> Path | None:
    """Where inlined HTML and compiled templates are kept (`inlinecache`)."""
    return settings.state_dir / what if cache else None


def _finish(
    post_id: str, list_name: str, subject: str, html: str, text: str, cache: Path | None
) -> RenderedEmail:
    inlined = inlinecache.inlined(html, cache, inline_css)
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
        text=_tidy_text(text),
        warnings=tuple(warnings),
    )


def _rstrip(line: str) -> str:
    return line if line == "-- " else line.rstrip()


def _tidy_text(text: str) -> str:
    """No trailing spaces (but the "-- " signature separator's), at most one
    blank line in a row, one final newline."""
    lines = [_rstrip(line) for line in text.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"
