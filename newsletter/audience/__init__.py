"""Audience: who receives what — addresses, lists, CSV formats, import, export, sync.

It may import `newsletter.store`, `newsletter.email`, `newsletter.posts`,
`newsletter.config` and `newsletter.errors`.

- `addresses`: validating and normalising an address
- `csvformats`, `serviceformats`: reading any CSV and the exports of Mailchimp, Substack, …
  (`servicestatuses`: what each service's status columns mean in our terms)
- `importer`: the bulk import into the store (its writes: `importwrites`)
- `subscribers`: import, export and sync of whole files (the API the CLI uses)
- `members`: one subscriber or list in the store (add, remove, unsubscribe, counts;
  the statuses, rows and reads in `memberreads`)
- `lists`: the configured lists made rows of the store (what every daemon pass needs of this stage)
- `unsubscribes`: a link's one-click unsubscribe, recorded, and its undo (15 minutes)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from newsletter.lazy import lazy_exports

if TYPE_CHECKING:
    from newsletter.audience.lists import ensure_lists
    from newsletter.audience.members import (
        SubscriberRow,
        add_subscriber,
        get_by_email,
        list_counts,
        remove_member,
        resubscribe,
        unsubscribe,
    )
    from newsletter.audience.subscribers import export_list, import_file, sync_directory

_EXPORTS = {
    "SubscriberRow": "members",
    "add_subscriber": "members",
    "ensure_lists": "lists",
    "get_by_email": "members",
    "list_counts": "members",
    "remove_member": "members",
    "resubscribe": "members",
    "unsubscribe": "members",
    "export_list": "subscribers",
    "import_file": "subscribers",
    "sync_directory": "subscribers",
}
__all__ = [
    "SubscriberRow",
    "add_subscriber",
    "ensure_lists",
    "export_list",
    "get_by_email",
    "import_file",
    "list_counts",
    "remove_member",
    "resubscribe",
    "sync_directory",
    "unsubscribe",
]

__getattr__ = lazy_exports(__name__, _EXPORTS)
