"""Posts: find and parse a blog's posts as Jekyll does, into frozen `Post`s.

The first stage of the pipeline.  It may import only `newsletter.config` and
`newsletter.errors`.

- `collection`: `load_posts`: both passes through the index, or the last load whole
- `model`: `Post`, `Author`, `PostCollection`, `post_status`
- `building`: pass 2 — Liquid, byline, excerpt, Markdown → a `Post`
- `snapshot`: the last whole load, kept while no post file changed
- `files`: which files are posts (every `_posts` folder of a Jekyll site)
- `source`: pass 1 — front matter with `defaults:`, date, identity, URL
- `site`: a Jekyll site's rules: discovery, `defaults:`, `_data`, collections, Liquid's `site`
- `index`: each post's parse kept in the state folder, so only changed posts are read again
- `lookup`: which post a reference (id, else path) names; drafts never mailed
- `jekyll`: front matter and dates as Jekyll reads them
- `rubytime`: Ruby's `Time.parse`, for dates Jekyll accepts
- `kramdown`: kramdown's syntax and typography taught to Python-Markdown
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
