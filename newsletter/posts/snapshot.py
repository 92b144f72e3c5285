"""A whole load of the posts, kept in the state folder for the next process.

The index (`newsletter.posts.index`) saves re-reading a post, but a warm load
still opens every entry, builds the site's Liquid variables from every
post and checks each post's lookups: ~0.15 s on 1,000 posts, paid by every
command that lists them (`posts`, `run --once`, `send`, the preview).  When
not one post file changed (nor what every parse reads: `index.fingerprint`),
the result of the load is the same, so it is kept whole, under

* the fingerprint, and
* every post file's path, size and mtime_ns (and the undated files', whose
  warnings are part of the load): `index.load_key`,
* and, stored with the load and checked after the key matches, the size and
  mtime_ns of each page or static file a `{% link %}` read (`pages.LinkTargets.consulted`),

and handed back by one read.  Any difference, or a file changed less than
`index.RACY_NS` ago (a coarse mtime could hide a second edit), falls back to
the index, which reads again only what changed.  A file that cannot be read
is ignored and rewritten, like the index's.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

from newsletter.config import Settings
from newsletter.posts import index as post_index

__all__ = ["read", "write"]


def _path(settings: Settings, kind: str) -> Path:
    return settings.state_dir / "index" / f"whole-{kind}.pickle"


def read(settings: Settings, kind: str, key: post_index.LoadKey | None) -> Any | None:
    """What `write` kept for `kind` under exactly `key`, else None."""
    if key is None:
        return None
    try:
        with _path(settings, kind).open("rb") as fh:
            # The key first, on its own: a load that changed stops reading there.
            if pickle.load(fh) != (post_index.INDEX_FORMAT, key):
                return None
            return pickle.load(fh)
    except Exception:  # none yet, or a truncated or foreign file: load properly, rewrite it
        return None


def write(settings: Settings, kind: str, key: post_index.LoadKey | None, value: Any) -> None:
    """Keep `value` for `kind` under `key` (taken before the load: a file
    changed meanwhile then no longer matches, and the next load reads it)."""
    if key is None:
        return
    path = _path(settings, kind)
    try:
        head = pickle.dumps((post_index.INDEX_FORMAT, key), protocol=pickle.HIGHEST_PROTOCOL)
        data = post_index.dumps(value)
        post_index.private_folder(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".whole-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(head)
            fh.write(data)
        os.replace(tmp, path)
    except OSError:
        return  # a read-only state folder: the next process loads through the index
