"""What a render produces, and the placeholders in it: without Jinja2.

A `RenderedEmail` is read back from the render cache (`rendercache`) and
turned into bytes (`message`) far more often than it is rendered, so these
names live apart from `render` (Jinja2, premailer): sending a post whose
render is kept imports neither.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PLACEHOLDERS", "RenderedEmail", "one_line"]

# Rendered into the output in place of per-recipient values; ASCII, no
# characters that HTML escaping, premailer or quoted-printable would change.
PLACEHOLDERS = {
    "email": "NLPH0EMAIL0NLPH",
    "name": "NLPH0NAME0NLPH",
    "unsubscribe_url": "NLPH0UNSUBSCRIBE0NLPH",
    "preferences_url": "NLPH0PREFERENCES0NLPH",
}


@dataclass(frozen=True)
class RenderedEmail:
    post_id: str
    list_name: str
    subject: str  # one line, plain text
    html: str  # inlined, with PLACEHOLDERS for per-recipient values
    text: str  # plain-text part, with PLACEHOLDERS
    warnings: tuple[str, ...] = ()


def one_line(value: str) -> str:
    """Collapse every kind of line break and whitespace run to a single space."""
    return re.sub(r"[\s\x00-\x1f\x7f\u2028\u2029\x85]+", " ", value).strip()
