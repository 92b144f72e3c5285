"""Posts: find and parse a blog's posts as Jekyll does, into frozen `Post`s.

The first stage of the pipeline.  It may import only `newsletter.config` and
`newsletter.errors`.

- `collection`: find post files, parse them, `Post`, `PostCollection`, `load_posts`
- `lookup`: which post a reference (id, else path) names; drafts never mailed
- `jekyll`: front matter and dates as Jekyll reads them
- `text`: titles, bylines, excerpts
- `liquid`: the Liquid subset Jekyll posts use
- `permalink`: Jekyll's permalink styles and URLs
- `markup`: Markdown to safe HTML (and HTML to plain text)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from newsletter.lazy import lazy_exports

if TYPE_CHECKING:
    from newsletter.posts.collection import (
        POST_SUFFIXES,
        Post,
        PostCollection,
        load_posts,
        post_files,
        post_status,
    )

__all__ = ["POST_SUFFIXES", "Post", "PostCollection", "load_posts", "post_files", "post_status"]

__getattr__ = lazy_exports(__name__, dict.fromkeys(__all__, "collection"))
