"""newsletter: a Jekyll blog's Markdown posts, as email, to subscriber lists."""

__version__ = "0.1.0"
