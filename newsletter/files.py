"""Private files on disk: the state folder, the database, the outbox, the secret, exports.

They hold subscriber addresses and messages with live unsubscribe tokens, so
whatever this process creates is 0700 (folders) or 0600 (files).  The mode
given to mkdir/open is masked by the umask, so it is set again with chmod
right after creation: the result does not depend on the umask.  Folders and
files that already exist are the user's and are left as they are.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dirs(path: Path) -> None:
    """`mkdir -p path`, each folder it creates 0700."""
    missing: list[Path] = []
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        try:
            made.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue  # another process made it at the same moment (and sets its mode)
        os.chmod(made, PRIVATE_DIR)


def private_file(path: Path) -> bool:
    """Create an empty 0600 file (and its folders) unless it exists; True if made."""
    private_dirs(Path(path).parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    return True


def write_kept(path: Path, data: bytes, keep: int) -> None:
    """Replace one entry of a cache folder in the state folder, atomically.

    The folder is made private if missing; mkstemp's file is already 0600.
    Now and then (one write in 256: names are hex digests) the oldest entries
    beyond `keep` are dropped.  A folder that cannot be written only means
    the work is done again next time, so OSError is swallowed.
    """
    folder = path.parent
    try:
        private_dirs(folder)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".new-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        if path.name.startswith("00"):
            _prune(folder, keep)
    except OSError:
        pass


def _prune(folder: Path, keep: int) -> None:
    entries = list(os.scandir(folder))
    if len(entries) <= keep:
        return
    entries.sort(key=lambda e: e.stat().st_mtime_ns)
    for entry in entries[: len(entries) - keep]:
        Path(entry.path).unlink(missing_ok=True)


@contextmanager
def replaced_when_done(path: Path) -> Iterator[IO[str]]:
    """A UTF-8 text file (newlines as written) that becomes `path` only once the
    block has finished: until then the old file, if any, stays as it was.

    Written to a temporary file in the same folder (a rename within one file
    system is atomic), flushed to disk, then renamed over `path`, so a crash
    or an error half-way (a `subscribers export -o backup.csv` of a list
    whose data could not be written) never leaves a truncated file where a
    complete one was.  A new file is 0600, as everything here is: subscriber
    data is private; a file that exists is the user's and keeps its mode.
    A symbolic link is followed (its target is replaced, the link stays), and
    what is no regular file (`/dev/stdout`, a pipe) is written as it is.
    """
    target = Path(os.path.realpath(path))
    try:
        existing: os.stat_result | None = target.stat()
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        with target.open("w", encoding="utf-8", newline="") as fh:
            yield fh
        return
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, stat.S_IMODE(existing.st_mode) if existing else PRIVATE_FILE)
        os.replace(tmp, target)
    except BaseException:  # a Ctrl-C too: the half-written copy goes, the old file stays
        Path(tmp).unlink(missing_ok=True)
        raise
