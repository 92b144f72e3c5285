"""Email: a post becomes a message — rendered once per post × list, personalised per recipient.

It may import `newsletter.posts`, `newsletter.config` and `newsletter.errors`.

- `render`: Jinja2 templates + premailer → `RenderedEmail` (HTML and text parts)
- `theme`: the Jinja2 environments (user folder, default theme), filters, template errors
- `content`: the post's HTML made for an inbox (headings, footnotes, images), the preheader
- `inline`: premailer, the CSS into style="" attributes
- `textpart`: the plain-text part tidied and wrapped at 78 columns
- `rendered`: `RenderedEmail` and its placeholders, without Jinja2 (what a kept render needs)
- `rendercache`: renders kept in the state folder until post, templates, list or settings change
- `inlinecache`: premailer's output kept in the state folder under a hash of its input HTML
- `message`: the MIME bytes, serialised once (`MessageTemplate`), personalised per `Recipient`
- `tokens`: signed unsubscribe tokens and their URLs
- `dkim`: signing the exact bytes sent (RSA and Ed25519, dual signing), DNS records
- `images`: image sizes from the site's files (Pillow) and captions
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from newsletter.lazy import lazy_exports

if TYPE_CHECKING:
    from newsletter.email.dkim import Signer
    from newsletter.email.message import MessageTemplate, Recipient
    from newsletter.email.render import render_digest, render_email
    from newsletter.email.rendercache import cached_render
    from newsletter.email.rendered import RenderedEmail
    from newsletter.email.tokens import load_secret, make_token, unsubscribe_url, verify_token

_EXPORTS = {
    "Signer": "dkim",
    "MessageTemplate": "message",
    "Recipient": "message",
    "RenderedEmail": "rendered",
    "render_digest": "render",
    "render_email": "render",
    "cached_render": "rendercache",
    "load_secret": "tokens",
    "make_token": "tokens",
    "unsubscribe_url": "tokens",
    "verify_token": "tokens",
}
__all__ = [
    "MessageTemplate",
    "Recipient",
    "RenderedEmail",
    "Signer",
    "cached_render",
    "load_secret",
    "make_token",
    "render_digest",
    "render_email",
    "unsubscribe_url",
    "verify_token",
]

__getattr__ = lazy_exports(__name__, _EXPORTS)
