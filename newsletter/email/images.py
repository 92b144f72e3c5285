"""Images in the email: sizes read from the site's own files, and captions.

Outlook for Windows lays an image out at its natural size unless the `<img>`
carries `width` (CSS max-width is ignored there), so a 2000 px photo would
break the 600 px layout.  For images whose file is in the site's source
(any URL under `[site] url` + baseurl), Pillow reads the real size and the
tag gets `width`/`height` capped at the content width; remote images keep
only what the author wrote, as does a file Pillow refuses to measure (too
many pixels: `_image_size`).

A Markdown image with a title (`![alt](src "Caption")`) standing alone in
its paragraph becomes a one-cell table with the caption under the image:
`<figure>`/`<figcaption>` are not supported by Outlook or Gmail's app.
"""

from __future__ import annotations

import functools
import html
import re
import threading
import warnings
from pathlib import Path
from urllib.parse import unquote, urlsplit

from newsletter.config import Settings

CONTAINER_WIDTH = 600
CONTENT_WIDTH = 536  # the container less the content cell's 32 px padding each side

_IMG = re.compile(r"<img\b[^>]*>", re.I)
_ATTR = re.compile(r'\s([a-zA-Z-]+)="([^"]*)"')
_CAPTIONED = re.compile(r"<p>\s*(<img\b[^>]*\btitle=\"[^\"]+\"[^>]*>)\s*</p>", re.I)


def site_root(settings: Settings) -> Path:
    """Where the site's files are: the Jekyll source, else above posts_dir."""
    return settings.site.source_dir or settings.site.posts_dir.parent


def local_file(url: str, settings: Settings) -> Path | None:
    """The file behind an image URL of this site, when it exists in the source."""
    base = settings.site.home.rstrip("/") + "/"
    if not url.startswith(base):
        return None
    relative = unquote(urlsplit(url[len(base) :]).path)
    try:
        root = site_root(settings).resolve()
        candidate = (root / relative).resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            return None  # never read outside the site, whatever the URL says
    except (OSError, ValueError):  # a name too long, a NUL byte: not a file of ours
        return None
    return candidate


def image_size(path: Path) -> tuple[int, int] | None:
    try:
        return _image_size(path, path.stat().st_mtime_ns)
    except OSError:
        return None


# `warnings.catch_warnings` swaps the process's warning filters: one image
# at a time, or two threads' swaps (the preview's) could leave ours in place.
_FILTERS = threading.Lock()


@functools.lru_cache(maxsize=512)
def _image_size(path: Path, _mtime: int) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError

    # Pillow takes an image of more than MAX_IMAGE_PIXELS (~89 Mpx) for a
    # decompression bomb: it warns, and past twice that raises from the header
    # alone (DecompressionBombError, no OSError; a 48 KB PNG can be 400 Mpx).
    # Either is a size unknown here, as a remote image's; the limit itself is
    # process-wide, guarding every other use of Pillow, so it stays as it is.
    bomb = (Image.DecompressionBombError, Image.DecompressionBombWarning)
    try:
        with _FILTERS, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError, *bomb):
        return None
    return (width, height) if width > 0 and height > 0 else None


def fit(size: tuple[int, int], cap: int) -> tuple[int, int]:
    """The size scaled down (never up) to at most `cap` wide, ratio kept."""
    width, height = size
    if width <= cap:
        return width, height
    return cap, max(1, round(height * cap / width))


def sized_image(url: str, settings: Settings, cap: int) -> tuple[int, int] | None:
    path = local_file(url, settings)
    size = image_size(path) if path is not None else None
    return fit(size, cap) if size is not None else None


def add_sizes(content_html: str, settings: Settings, cap: int = CONTENT_WIDTH) -> str:
    """Give each local `<img>` without a width its real size, capped at `cap`;
    an author's own `width` over `cap` comes down to it (height in proportion)."""

    def one(match: re.Match[str]) -> str:
        tag = match.group(0)
        attrs = {k.lower(): v for k, v in _ATTR.findall(tag)}
        if "width" in attrs:
            return _capped(tag, attrs, cap)
        if "src" not in attrs:
            return tag
        size = sized_image(html.unescape(attrs["src"]), settings, cap)
        if size is None:
            return tag
        end = "/>" if tag.endswith("/>") else ">"
        return f'{tag[: -len(end)].rstrip()} width="{size[0]}" height="{size[1]}"{end}'

    return _IMG.sub(one, content_html)


_SIZE_ATTR = re.compile(r'\s(width|height)="[^"]*"', re.I)


def _capped(tag: str, attrs: dict[str, str], cap: int) -> str:
    """`width="3000" height="1500"` -> `width="536" height="268"`: Outlook
    ignores max-width and would lay the email out as wide as the attribute."""
    width, height = attrs["width"].strip(), attrs.get("height", "").strip()
    if not width.isdigit() or int(width) <= cap:
        return tag  # within the column, or a percentage: as the author wrote it
    size = f' width="{cap}"'
    if height.isdigit() and int(width) > 0:
        size += f' height="{max(1, round(int(height) * cap / int(width)))}"'
    stripped = _SIZE_ATTR.sub("", tag)
    end = "/>" if stripped.endswith("/>") else ">"
    return f"{stripped[: -len(end)].rstrip()}{size}{end}"


def add_captions(content_html: str) -> str:
    """A titled image alone in its paragraph -> image with a caption under it."""

    def one(match: re.Match[str]) -> str:
        tag = match.group(1)
        title = dict(_ATTR.findall(tag)).get("title", "")
        return (
            '<table role="presentation" class="figure" width="100%" cellpadding="0" '
            'cellspacing="0" border="0"><tr><td class="figure-image">'
            f'{tag}</td></tr><tr><td class="caption">{title}</td></tr></table>'
        )

    return _CAPTIONED.sub(one, content_html)
