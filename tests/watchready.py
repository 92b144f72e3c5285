"""Knowing when a watchfiles watcher sees changes, instead of sleeping.

watchfiles sets its inotify watches up when it makes its RustNotify, before it
first waits for a change: a file written after that is seen, one written
before may not be.  A starved machine had not set the watch up after a fixed
0.3 s, so tests wait for this instead (the `watched` fixture in conftest.py).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any


class Watched:
    """The folders each RustNotify made so far was asked to watch."""

    def __init__(self) -> None:
        self._paths: list[Path] = []
        self._changed = threading.Condition()

    def wrap(self, real: Any) -> Any:
        def notify(watch_paths: list[str], *args: Any, **kwargs: Any) -> Any:
            watcher = real(watch_paths, *args, **kwargs)
            with self._changed:
                self._paths.extend(Path(p).resolve() for p in watch_paths)
                self._changed.notify_all()
            return watcher

        return notify

    def made(self) -> bool:
        """At least one watcher is set up (whatever it watches)."""
        with self._changed:
            return bool(self._paths)

    def covers(self, path: Path) -> bool:
        """A watcher is set up on `path` or on a folder above it."""
        path = path.resolve()
        with self._changed:
            return any(path == p or path.is_relative_to(p) for p in self._paths)

    def wait(self, *paths: Path, timeout: float = 60.0) -> bool:
        """Until every one of `paths` is watched (False after `timeout`, which
        only bounds a hang)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not all(self.covers(p) for p in paths):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True
