"""`newsletter snippet`: the signup form as HTML to paste into a Jekyll `_includes/` file.

The same form `GET /subscribe` shows (`templates/_signup_form.html`), with
an absolute action URL: no JavaScript, a label for every field, the
honeypot hidden with the `hidden` attribute (no CSS needed).
"""

from __future__ import annotations

import re

from newsletter.config import ListSettings, Settings
from newsletter.errors import ConfigError
from newsletter.web.pages import kept_pages, render_page

# Said where the owner pastes the form: a page that hides its origin cannot
# use it (docs/web.md), and nothing on that page would tell them why.
REFERRER_NOTE = """<!-- This form needs a page that lets browsers send its origin. Under a
     referrer policy of no-referrer or same-origin a browser posts it as
     Origin: null, and the server refuses it (403) as it must a form on
     another site; strict-origin-when-cross-origin (the browsers' default)
     works. See docs/web.md. -->"""


def signup_snippet(settings: Settings, list_names: tuple[str, ...]) -> str:
    # A list named twice (`--list a --list a`) is offered once, in the order first named.
    list_names = tuple(dict.fromkeys(list_names))
    chosen: list[ListSettings] = []
    for name in list_names:
        lst = settings.get_list(name)
        if not lst.public:
            raise ConfigError(
                "the list is not public: add `public = true` to offer it on the web",
                path=settings.config_path,
                key=f"lists.{name}.public",
            )
        chosen.append(lst)
    action = f"{settings.web.public_url.rstrip('/')}/subscribe"
    # Its compiled code kept in the state folder, as the public pages' (the
    # same form): each `newsletter snippet` is a new process.
    form = render_page(
        "_signup_form.html",
        kept_pages(settings),
        action=action,
        form_lists=chosen,
        given_email="",
        given_name="",
        chosen=None,
    )
    names = ", ".join(list_names)
    note = f"{settings.site.title}: newsletter signup ({names}); from `newsletter snippet`"
    return f"<!-- {comment_text(note)} -->\n{REFERRER_NOTE}\n{form}"


def comment_text(text: str) -> str:
    """`text` made safe inside `<!-- … -->`, whatever it holds.

    A comment's text may not hold "-->", "--!>" or "<!--" (the first two end
    it early: the rest of a title showed on the page); with no "--" at all,
    none can appear.  Every run of dashes is spaced out in one pass ("---"
    is "- - -"; replacing "--" once left "- --").  The spaces the caller puts
    around it keep it from starting with ">" or "->" or ending with "-".
    """
    return re.sub(r"-{2,}", lambda run: " ".join(run.group()), text)
