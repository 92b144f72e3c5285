"""Post × list → `RenderedEmail`: Jinja2 templates, premailer inlining, text part.

FOUNDATION STUB: `RenderedEmail` and `render_email` are the contract.
Per-recipient values are left as the placeholders in `PLACEHOLDERS` so that a
mailing renders once and `message` substitutes per recipient.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from newsletter.config import ListSettings, Settings
from newsletter.posts import Post

# Rendered into the output in place of per-recipient values; ASCII, no
# characters that HTML escaping, premailer or quoted-printable would change.
PLACEHOLDERS = {
    "email": "NLPH0EMAIL0NLPH",
    "name": "NLPH0NAME0NLPH",
    "unsubscribe_url": "NLPH0UNSUBSCRIBE0NLPH",
}


@dataclass(frozen=True)
class RenderedEmail:
    post_id: str
    list_name: str
    subject: str  # one line, plain text
    html: str  # inlined, with PLACEHOLDERS for per-recipient values
    text: str  # plain-text part, with PLACEHOLDERS
    warnings: tuple[str, ...] = ()


def render_email(post: Post, settings: Settings, mailing_list: ListSettings) -> RenderedEmail:
    unsub = PLACEHOLDERS["unsubscribe_url"]
    body = (
        f"<html><body><h1>{post.title_html}</h1>{post.excerpt_html}"
        f'<p><a href="{html.escape(post.url)}">Read the full post</a></p>'
        f'<p><a href="{unsub}">Unsubscribe</a></p></body></html>'
    )
    text = f"{post.title}\n\n{post.excerpt_text}\n\n{post.url}\n\nUnsubscribe: {unsub}\n"
    return RenderedEmail(post.post_id, mailing_list.name, post.title, body, text)
