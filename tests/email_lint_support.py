"""The rendered emails of every type, for the external checkers (doiuse-email,
SpamAssassin): post (excerpt), full content, digest, and a test send."""

from __future__ import annotations

from test_render_support import make_post, make_settings

from newsletter.config import Settings
from newsletter.email.message import MessageTemplate, Recipient, fill_placeholders, sample_recipient
from newsletter.email.render import RenderedEmail, render_digest, render_email, template_environment
from newsletter.posts.collection import Author

POSTAL = "Tide Notes, 12 Harbour Road, Example Bay 00000"


def lint_settings(**email_kw: object) -> Settings:
    return make_settings(postal_address=POSTAL, preferences_link=True, **email_kw)


def rendered_emails() -> dict[str, tuple[RenderedEmail, Settings, str]]:
    """name -> (rendered, settings, subject prefix)."""
    template_environment.cache_clear()
    settings = lint_settings()
    full = lint_settings(content="full")
    second = make_post(
        "A short second post about sand fleas, and where to find them at low tide.",
        post_id="fleas",
        title="Sand Fleas",
        title_html="Sand Fleas",
        date=make_post().date.replace(day=15),
        image=None,
        # An avatar in the byline, so the linters see that image too.
        authors=(Author("Defne Kaya", avatar="https://tides.example.com/images/defne.jpg"),),
    )
    everything = settings.lists["everything"]
    return {
        "post": (render_email(make_post(), settings, everything), settings, ""),
        "full": (render_email(make_post(), full, full.lists["everything"]), full, ""),
        "digest": (
            render_digest([make_post(), second], settings, settings.lists["weekly"]),
            settings,
            "",
        ),
        "test-send": (render_email(make_post(), settings, everything), settings, "[TEST] "),
    }


def html_pages() -> dict[str, str]:
    pages = {}
    for name, (rendered, settings, _) in rendered_emails().items():
        pages[name] = fill_placeholders(rendered, sample_recipient(settings))[0]
    return pages


def messages() -> dict[str, bytes]:
    reader = Recipient(
        "reader@example.org", "Rae Reader", "https://news.tides.example.com/unsubscribe/AbC123"
    )
    found = {}
    for name, (rendered, settings, prefix) in rendered_emails().items():
        template = MessageTemplate.build(rendered, settings, subject_prefix=prefix)
        found[name] = template.personalise(reader, mailing_key=f"lint-{name}")
    return found
