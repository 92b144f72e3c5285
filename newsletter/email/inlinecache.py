"""premailer's output kept in the state folder, keyed by its input; and
Jinja2's compiled templates, keyed by their source.

Inlining the CSS is most of a render: importing premailer and cssutils and
their first transform cost ~0.25 s in a fresh process, against ~0.05 s for
the Jinja2 templates.  It is a pure function of the HTML it is given (the
network is off, the options are fixed in `render.inline_css`), so its result
is stored under a hash of

* that HTML, whole (every post, template, list and setting that shaped it is
  in it; nothing read from elsewhere is trusted to be unchanged), and
* what does the inlining: the installed premailer and cssutils (their files'
  size and mtime) and `render.py` itself (where the options are), by content;

and read back instead of inlining again.  Unlike the render cache
(`rendercache`, a whole render under a hash of what it reads), this is safe
for sending too: the templates still run every time, so an image that
changed size on disk is measured again.  A failed inlining is not kept.

Compiling the templates is most of what is left (~0.1 s in a fresh
process): Jinja2's own bytecode cache keeps the compiled code of each
template under its name and a checksum of its source (`compiled_templates`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from newsletter.files import write_kept

if TYPE_CHECKING:
    import jinja2

__all__ = ["MAX_ENTRIES", "compiled_templates", "inlined"]

INLINE_FORMAT = 1
MAX_ENTRIES = 5000  # beyond this the oldest are dropped
_RENDER = Path(__file__).resolve().with_name("render.py")
_stamp: list[str] = []  # what does the inlining, worked out once per process


def inlined(html: str, folder: Path | None, inline: Callable[[str], str]) -> str:
    """`inline(html)`, from `folder` when it was inlined before (None: no cache)."""
    if folder is None:
        return inline(html)
    digest = hashlib.sha256(f"{INLINE_FORMAT}\0{_engine()}\0".encode())
    digest.update(html.encode("utf-8", "surrogatepass"))
    path = folder / f"{digest.hexdigest()}.html"
    try:
        return path.read_bytes().decode("utf-8", "surrogatepass")
    except (OSError, UnicodeDecodeError):
        pass  # not yet, or unreadable: inline again
    result = inline(html)
    _write(path, result)
    return result


def _engine() -> str:
    """The installed premailer and cssutils, and the options in render.py."""
    if not _stamp:
        parts = [hashlib.sha256(_RENDER.read_bytes()).hexdigest()]
        for name in ("premailer", "cssutils"):
            spec = importlib.util.find_spec(name)
            for folder in (spec.submodule_search_locations or []) if spec else []:
                for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                    if entry.name.endswith(".py"):
                        st = entry.stat()
                        parts.append(f"{entry.path}\0{st.st_size}\0{st.st_mtime_ns}")
        _stamp.append(hashlib.sha256("\n".join(parts).encode()).hexdigest())
    return _stamp[0]


def compiled_templates(folder: Path) -> jinja2.BytecodeCache:
    """Jinja2's file cache of compiled templates in `folder` (private, made on
    first write); a folder that cannot be written only means compiling again."""
    import jinja2

    class _Compiled(jinja2.FileSystemBytecodeCache):
        def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            with contextlib.suppress(OSError):  # no such folder, not a folder: compile
                super().load_bytecode(bucket)

        def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            try:
                _private_folder(folder)
                super().dump_bytecode(bucket)
            except OSError:
                pass

    return _Compiled(str(folder))


def _private_folder(folder: Path) -> None:
    """`folder` and the state folder above it, private to this user (0700)."""
    for each in (folder.parent, folder):
        if not each.is_dir():
            each.mkdir(mode=0o700, parents=True, exist_ok=True)
            each.chmod(0o700)


def _write(path: Path, result: str) -> None:
    write_kept(path, result.encode("utf-8", "surrogatepass"), MAX_ENTRIES)
