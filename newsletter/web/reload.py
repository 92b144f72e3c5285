"""Live reload: watchfiles notices a saved file, server-sent events tell the page.

One watcher task per app bumps a generation number; every open page holds an
`EventSource` on /events and reloads itself when the number changes.  The page
keeps its width and tab in the URL hash, so a reload lands where it was.

The watcher is for pages already open, so the preview starts it once its
first answer has gone out (`FirstAnswer`), not before: setting up inotify on
the posts and the theme would otherwise come before the first page.  What
changed in between is caught up when the watcher is up (`watch`'s `ready`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    import watchfiles

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0
# watchfiles waits for a quiet spell before reporting; short enough that the
# page updates well within 2 s of a save, long enough to group an editor's
# write-rename-chmod burst into one reload.
DEBOUNCE_MS = 200


class Broadcaster:
    """A generation counter that server-sent event streams wait on."""

    def __init__(self) -> None:
        self.generation = 0
        self._changed = asyncio.Event()
        self.closed = False

    def bump(self) -> None:
        self.generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    async def wait(self, timeout: float) -> bool:
        """True when something changed (or closed) within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stream(self, seen: int | None = None) -> AsyncIterator[str]:
        """SSE frames: the current generation, then one per change.

        A page rendered at an older generation (`seen`) is told at once.
        """
        last = self.generation if seen is None else seen
        yield f"retry: 500\nevent: hello\ndata: {self.generation}\n\n"
        while not self.closed:
            if self.generation != last:
                last = self.generation
                yield f"event: reload\ndata: {last}\n\n"
                continue
            # No await between the check above and this wait: no change is missed.
            if not await self.wait(KEEPALIVE_SECONDS):
                yield ": keepalive\n\n"


class FirstAnswer:
    """Sets `answered()`'s event once the app has sent the body (or, for a
    stream, the first part) of its first response."""

    def __init__(self, app: ASGIApp, answered: Callable[[], asyncio.Event | None]) -> None:
        self.app = app
        self.answered = answered

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        event = self.answered() if scope["type"] == "http" else None
        if event is None or event.is_set():
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body":
                event.set()

        await self.app(scope, receive, sending)


async def watch(
    broadcaster: Broadcaster,
    dirs: Callable[[], list[Path]],
    files: Callable[[], list[Path]],
    stop: asyncio.Event,
    ready: Callable[[], Awaitable[None]] | None = None,
    replan: asyncio.Event | None = None,
) -> None:
    """Bump the broadcaster on every change until `stop`; re-plan when a
    configuration file or a watched folder itself changes, or when `replan`
    is set (`dirs` or `files` would answer differently now).

    `dirs` are watched to the bottom; the folders of `files` only at their top
    level (a site's `.git`, `_site`, `node_modules` and state folder, with its
    database and WAL, lie below the configuration file: watching them would
    cost inotify set-up per folder and a wake-up per write).

    A folder of `dirs` not there yet is watched for in its parent (when that
    is there): made, it reloads and re-plans, so its files are seen from the
    first one.

    `ready` is awaited once, when the first watcher is set up: from then on
    every change is seen, and `ready` can look for what changed before."""
    while not stop.is_set():
        planned, watch_files = dirs(), files()
        watch_dirs = [d for d in planned if d.is_dir()]
        missing = [d for d in planned if not d.is_dir()]
        folders = [f for f in _folders_of([*watch_files, *missing], watch_dirs) if f.is_dir()]
        if not watch_dirs and not folders:
            await stop.wait()
            return
        # A watched folder itself (deleted, made, or another moved in its
        # place) reloads and re-plans: its watch went with the old folder.
        wanted = {str(f) for f in (*watch_files, *planned)}
        prefixes = tuple(str(d) + "/" for d in watch_dirs)

        again = await _watch_once(
            watch_dirs,
            folders,
            _filter(wanted, prefixes),
            wanted,
            stop,
            broadcaster,
            ready,
            replan,
        )
        ready = None
        if not again:
            return


def _folders_of(files: list[Path], dirs: list[Path]) -> list[Path]:
    """The folders holding `files`, but none a watched dir already covers."""
    folders = dict.fromkeys(f.parent for f in files)
    return [f for f in folders if not any(f.is_relative_to(d) for d in dirs)]


def _filter(
    wanted: set[str], prefixes: tuple[str, ...]
) -> Callable[[watchfiles.Change, str], bool]:
    """Only the configuration files, the watched folders and what lies under them."""

    def relevant(_change: watchfiles.Change, path: str) -> bool:
        # A folder watched by a name with `.` or `..` in it reports them in
        # its paths; `wanted` and `prefixes` are resolved.
        path = os.path.normpath(path)
        return path in wanted or path.startswith(prefixes)

    return relevant


class _RoundEnd(asyncio.Event):
    """Set by `set()` (the round is over: a re-plan, or awatch's own task
    cancelled) or when `stop` is.  awatch checks it between steps, from its
    thread; setting `stop` itself on a re-plan would end the whole watch."""

    def __init__(self, stop: asyncio.Event) -> None:
        super().__init__()
        self._stop = stop

    def is_set(self) -> bool:
        return super().is_set() or self._stop.is_set()


async def _watch_once(
    trees: list[Path],
    folders: list[Path],
    relevant: Callable[[watchfiles.Change, str], bool],
    replan_on: set[str],
    stop: asyncio.Event,
    broadcaster: Broadcaster,
    ready: Callable[[], Awaitable[None]] | None,
    replan: asyncio.Event | None = None,
) -> bool:
    """Watch until a path of `replan_on` changes or `replan` is set (True:
    re-plan), or `stop` (False).

    watchfiles takes `recursive` per watcher, not per path: `trees` (recursive)
    and `folders` (top level only) are two watchers, waited on together."""
    import watchfiles  # uvicorn imports it too; the in-process app needs it only here

    ending = _RoundEnd(stop)
    watchers = [
        watchfiles.awatch(
            *paths,
            watch_filter=relevant,
            stop_event=ending,
            debounce=DEBOUNCE_MS,
            step=50,
            recursive=recursive,
        )
        for paths, recursive in ((trees, True), (folders, False))
        if paths
    ]
    waiting: dict[asyncio.Future[Any], Any] = {
        asyncio.ensure_future(anext(changes)): changes for changes in watchers
    }
    # Set meanwhile (a post now links to another page): the next round watches it.
    replanned = asyncio.ensure_future(replan.wait()) if replan is not None else None
    try:
        if ready is not None:
            # awatch sets its watches up in its first step, before its first
            # wait (in a thread); this task runs again only after those steps.
            await asyncio.sleep(0)
            await ready()
        while True:
            steps = [*waiting, *([replanned] if replanned is not None else [])]
            done, _ = await asyncio.wait(steps, return_when=asyncio.FIRST_COMPLETED)
            batch: set[tuple[watchfiles.Change, str]] = set()
            for step in done:
                if step is replanned:
                    continue
                changes = waiting.pop(step)
                batch |= {(change, os.path.normpath(path)) for change, path in step.result()}
                waiting[asyncio.ensure_future(anext(changes))] = changes
            if batch:
                log.debug("reloading after %s", batch)
                broadcaster.bump()
            if any(path in replan_on for _, path in batch):
                return True
            if replan is not None and replanned in done:
                replan.clear()
                return True
    except StopAsyncIteration:  # `stop`
        return False
    except (OSError, RuntimeError) as exc:  # e.g. inotify watch limit reached
        log.warning("live reload is off: %s", exc)
        await stop.wait()
        return False
    finally:
        # Closed here, not by the garbage collector.  A step still running
        # (the other watcher's, or this task cancelled while it waits in its
        # thread) ends with `ending` within its 50 ms and closes its watcher.
        ending.set()
        if replanned is not None:
            replanned.cancel()
        for step, changes in waiting.items():
            if step.done():
                _outcome(step)
                await changes.aclose()
            else:
                step.add_done_callback(_outcome)


def _outcome(step: asyncio.Future[Any]) -> None:
    """Retrieve a finished step's exception (its round is over: nothing to do)."""
    if not step.cancelled():
        step.exception()
