"""Running the web apps under uvicorn: in the foreground (CLI) or in a thread.

The listening socket is bound here, before uvicorn starts, so that "address
already in use" becomes one clear `WebError` instead of uvicorn's exit, and
so that port 0 (tests) reports the port it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import uvicorn
from starlette.types import ASGIApp

from newsletter.config import Settings
from newsletter.errors import WebError

log = logging.getLogger(__name__)

# Keep enough of a token to tell two requests apart in a log, never enough
# to use it: whoever reads the log must not be able to unsubscribe anyone,
# change their lists (preferences) or confirm a signup.
_TOKEN_IN_PATH = re.compile(r"(/(?:unsubscribe|preferences|confirm)/)([^/?#\s\"]{6})[^/?#\s\"]*")
GRACEFUL_SECONDS = 2


def redact_tokens(text: str) -> str:
    return _TOKEN_IN_PATH.sub(r"\1\2…", text)


class TokenRedactingFilter(logging.Filter):
    """Shortens the token of /unsubscribe/, /preferences/ and /confirm/ links
    in every record of the logger it sits on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_tokens(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_tokens(a) if isinstance(a, str) else a for a in record.args)
        return True


def install_log_filter() -> None:
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, TokenRedactingFilter) for f in logger.filters):
            logger.addFilter(TokenRedactingFilter())


# What to change when the address is taken / the host is wrong: the CLI's
# options, or, for `run --serve` (which has none), the settings.
CLI_HINTS = ("try another --port", "check --host or [web] host")
SETTINGS_HINTS = ("change [web] port", "check [web] host")


def bind_socket(host: str, port: int, hints: tuple[str, str] = CLI_HINTS) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        # Only a taken or privileged port is cured by another port; an unknown
        # name or an address this machine does not have is the host's fault.
        port_trouble = exc.errno in (errno.EADDRINUSE, errno.EACCES)
        hint = hints[0] if port_trouble else hints[1]
        raise WebError(f"cannot listen on {host}:{port}: {reason} ({hint})") from exc
    sock.set_inheritable(True)
    return sock


def _config(app: ASGIApp, *, access_log: bool, log_level: str) -> uvicorn.Config:
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        proxy_headers=True,
        server_header=False,
    )
    install_log_filter()  # uvicorn.Config (re)configures logging; filters go after it
    return config


class _Server(uvicorn.Server):
    """uvicorn's server, running `before_shutdown` (in the event loop) as soon
    as it starts shutting down: before it waits for open connections, so that
    endless streams (live reload's /events) can end instead of being cancelled
    with a traceback once the grace period is over."""

    def __init__(self, config: uvicorn.Config, before_shutdown: list[Callable[[], None]]) -> None:
        super().__init__(config)
        self.before_shutdown = before_shutdown
        self.stopped_because: str | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for hook in self.before_shutdown:
            hook()
        await super().shutdown(sockets)


def _watch(server: _Server, stop_when: Callable[[], str | None], done: threading.Event) -> None:
    """Ask `stop_when` every `STOP_CHECK_SECONDS` (in a thread of its own: it
    may query a database that hangs, and the event loop, which acts on
    Ctrl-C and SIGTERM, must not wait for it); stop the server with its reason."""
    while not done.wait(STOP_CHECK_SECONDS):
        reason = stop_when()
        if reason is not None:
            log.error("%s", reason)
            server.stopped_because = reason
            server.should_exit = True
            return


STOP_CHECK_SECONDS = 5.0


def run_app(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    access_log: bool = True,
    announce: Callable[[str], None] | None = None,
    before_shutdown: list[Callable[[], None]] | None = None,
    stop_when: Callable[[], str | None] | None = None,
) -> None:
    """Serve in the foreground until Ctrl-C; `announce` gets the URL once bound.

    `stop_when` (asked every few seconds) ends it with a `WebError` of its reason."""
    sock = bind_socket(host, port)
    if announce is not None:
        shown = f"[{host}]" if ":" in host else host
        announce(f"http://{shown}:{sock.getsockname()[1]}/")
    config = _config(app, access_log=access_log, log_level="info")
    server = _Server(config, before_shutdown or [])
    done = threading.Event()
    if stop_when is not None:
        watch = threading.Thread(
            target=_watch, args=(server, stop_when, done), name="stop-when", daemon=True
        )
        watch.start()
    # uvicorn shuts down cleanly, then re-raises the Ctrl-C it caught;
    # stopping a server with Ctrl-C is success, not click's "Aborted!".
    try:
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=[sock])
    finally:
        done.set()  # a check under way ends on its own (a daemon thread)
    if server.stopped_because is not None:
        raise WebError(server.stopped_because)


@dataclass
class RunningServer:
    """A server in a background thread; `stop()` ends it."""

    server: uvicorn.Server
    thread: threading.Thread
    host: str
    port: int
    before_stop: list[Callable[[], None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        for hook in self.before_stop:
            hook()
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    access_log: bool = False,
    log_level: str = "warning",
    startup_timeout: float = 10.0,
    hints: tuple[str, str] = CLI_HINTS,
) -> RunningServer:
    """Serve `app` from a daemon thread; returns once it accepts connections."""
    sock = bind_socket(host, port, hints)
    actual_port = sock.getsockname()[1]
    server = uvicorn.Server(_config(app, access_log=access_log, log_level=log_level))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"web-{actual_port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise WebError(f"the web server on {host}:{actual_port} did not start")
        time.sleep(0.02)
    return RunningServer(server, thread, host, actual_port)


def serve_in_thread(
    settings: Settings, host: str | None = None, port: int | None = None
) -> RunningServer:
    """The public app (`newsletter serve`) in a thread: for `run --serve`."""
    from newsletter.web.public import create_public_app

    app = create_public_app(settings)
    return start_in_thread(
        app,
        host or settings.web.host,
        settings.web.port if port is None else port,
        access_log=True,
        log_level="info",
        hints=SETTINGS_HINTS if host is None and port is None else CLI_HINTS,
    )


def preview_in_thread(
    load: Callable[[], Settings], port: int = 0, *, live: bool = True
) -> RunningServer:
    """The preview app in a thread (tests, and anyone embedding it)."""
    from newsletter.web.preview import create_preview_app

    app = create_preview_app(load, live=live)
    running = start_in_thread(app, "127.0.0.1", port)
    broadcaster = app.state.preview.broadcaster
    loop_of = _loop_getter(running.server)
    running.before_stop.append(lambda: _call_in_loop(loop_of(), broadcaster.close))
    return running


def _loop_getter(server: uvicorn.Server) -> Callable[[], asyncio.AbstractEventLoop | None]:
    def get() -> asyncio.AbstractEventLoop | None:
        servers = getattr(server, "servers", [])
        return servers[0].get_loop() if servers else None

    return get


def _call_in_loop(loop: asyncio.AbstractEventLoop | None, func: Callable[[], None]) -> None:
    if loop is not None and not loop.is_closed():
        loop.call_soon_threadsafe(func)
