"""No link before its page is live: the daemon asks for the post's URL before
sending and waits, with backoff, until it answers 200 (a local HTTP server on
127.0.0.1 that starts answering after a delay); past the timeout the mailing
is held and `status` says why, with the last answer."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from smtpserver import SmtpTestServer
from test_daemon_support import MEMBERS, Site, add_members, engine_of, make_site

from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.daemon.scheduler import Daemon

PAST = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
POST_PATH = PAST.strftime("/%Y/%m/%d/late-build.html")


class LateSite:
    """Answers 404 for the post until `delay` after its first request, then 200.

    Counted from the first request, not from start-up: on a loaded machine
    the daemon can take a second to ask, and the page must still be missing
    for several of its checks.  Records each request.
    """

    def __init__(self, delay: float | None) -> None:
        self.delay = delay
        self.live_at: float | None = None
        self.requests: list[tuple[float, str, int]] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if site.live_at is None and site.delay is not None:
                    site.live_at = time.monotonic() + site.delay
                live = site.live_at is not None and time.monotonic() >= site.live_at
                code = 200 if live and self.path == POST_PATH else 404
                site.requests.append((time.monotonic(), self.path, code))
                body = b"<h1>late build</h1>" if code == 200 else b"not built yet"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def go_live(self) -> None:
        """The build is done: the post answers 200 from now on."""
        self.live_at = time.monotonic()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[SmtpTestServer]:
    with SmtpTestServer() as srv:
        yield srv


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def gated_site(root: Path, smtp_port: int, web: LateSite, timeout: str = "1h") -> Site:
    site = make_site(root, transport="smtp", smtp_port=smtp_port, scan_interval="0.2s")
    text = site.config.read_text()
    text = text.replace('url = "https://notes.example.com"', f'url = "{web.url}"')
    text = text.replace(
        "wait_for_page = false",
        f'wait_for_page = true\nwait_for_page_retry = "0.3s"\nwait_for_page_timeout = "{timeout}"',
    )
    site.config.write_text(text)
    site.write_post("late-build.md", "Late build", PAST)
    (site.posts / "late-build.md").rename(site.posts / PAST.strftime("%Y-%m-%d-late-build.md"))
    return site


def status(site: Site) -> str:
    result = CliRunner().invoke(main, ["--config", str(site.config), "status"])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_the_email_waits_for_its_page_then_goes_out(tmp_path: Path, server: SmtpTestServer) -> None:
    # The page goes live once the daemon has asked six times, not after a
    # fixed 2 s: a loaded machine had asked only two or three times by then,
    # too few checks to see the wait grow.
    web = LateSite(delay=None)
    site = gated_site(tmp_path, server.port, web)
    settings = site.settings()
    assert settings.waits_for_page
    engine = engine_of(settings)
    add_members(engine, "news", settings=settings)
    daemon = Daemon(settings, engine, watch=False)
    daemon.start()
    try:
        # The daemon records the 404 after the request the server has seen.
        assert wait_for(lambda: "waiting for the page" in status(site), 60)
        assert f"{web.url}{POST_PATH} answered 404" in status(site)
        assert wait_for(lambda: len(web.requests) >= 6, 60)
        web.go_live()
        assert wait_for(lambda: len(server.recipients()) == len(MEMBERS), 60)
    finally:
        daemon.stop()
        web.stop()
    # Nothing went out while the page answered 404; every check asked for the post.
    not_live = [t for t, _path, code in web.requests if code != 200]
    live = [t for t, _path, code in web.requests if code == 200]
    assert {path for _t, path, _c in web.requests} == {POST_PATH}
    assert len(not_live) >= 2 and len(live) == 1  # retried; one 200 was enough
    gaps = [b - a for a, b in itertools.pairwise(not_live)]
    # The wait grows with the time waited (0.3, 0.3, 0.6, 1.2, 2.4 s): the last
    # gap is 2.4 s less how much later its check started than the one before.
    # A fixed 0.3 s retry gave 0.06-0.35 s gaps (their first one, compared
    # with before, was so short that it passed too).
    assert gaps[-1] >= 1.2, gaps
    assert "waiting" not in status(site)
    assert sorted(server.recipients()) == sorted(MEMBERS)


def test_nothing_is_sent_before_the_page_answers_200(
    tmp_path: Path, server: SmtpTestServer
) -> None:
    web = LateSite(delay=1.5)
    site = gated_site(tmp_path, server.port, web)
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "news", settings=settings)
    daemon = Daemon(settings, engine, watch=False)
    daemon.start()
    try:
        assert wait_for(lambda: bool(server.received), 60)
        sent_at = time.monotonic()
    finally:
        daemon.stop()
        web.stop()
    assert web.live_at is not None and sent_at >= web.live_at


def test_past_the_timeout_the_mailing_is_held_and_status_says_why(
    tmp_path: Path, server: SmtpTestServer
) -> None:
    web = LateSite(delay=None)  # the build never happens
    site = gated_site(tmp_path, server.port, web, timeout="1s")
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "news", settings=settings)
    daemon = Daemon(settings, engine, watch=False)
    daemon.start()
    try:
        assert wait_for(lambda: "held" in status(site), 60)
        checks = len(web.requests)
        time.sleep(1.0)  # a held mailing is not checked again
        assert len(web.requests) == checks
    finally:
        daemon.stop()
    shown = status(site)
    assert "held (the page never went live)" in shown
    assert f"held: {web.url}{POST_PATH} did not answer 200 within 1 s" in shown
    assert "last answer at" in shown and "404 Not Found" in shown
    assert server.received == []
    # The owner sends it by hand once they have looked.
    result = CliRunner().invoke(
        main, ["--config", str(site.config), "send", "late-build", "--list", "news"]
    )
    web.stop()
    assert result.exit_code == 0, result.output
    assert sorted(server.recipients()) == sorted(MEMBERS)
    # Before, the finished mailing still told the owner to send it.
    shown = status(site)
    assert "done" in shown and "held" not in shown and "did not answer" not in shown


def test_a_waiting_mailing_sent_once_the_wait_is_off_drops_its_note(
    tmp_path: Path, server: SmtpTestServer
) -> None:
    """`wait_for_page = false` set while a mailing waits for its page: the
    next pass sends it, and `status` no longer says it waits for a 404."""
    web = LateSite(delay=None)  # the build never happens
    site = gated_site(tmp_path, server.port, web)
    settings = site.settings()
    add_members(engine_of(settings), "news", settings=settings)
    once = ["--config", str(site.config), "run", "--once"]
    assert CliRunner().invoke(main, once).exit_code == 0
    assert "waiting for the page" in status(site)
    site.config.write_text(
        site.config.read_text().replace("wait_for_page = true", "wait_for_page = false")
    )
    result = CliRunner().invoke(main, once)
    web.stop()
    assert result.exit_code == 0, result.output
    assert sorted(server.recipients()) == sorted(MEMBERS)
    shown = status(site)
    assert "done" in shown and "waiting" not in shown and "answered 404" not in shown, shown


def test_wait_for_page_defaults_on_for_an_https_site(tmp_path: Path) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text('[site]\nurl = "https://blog.example.com"\n')
    assert load_settings(config).waits_for_page
    config.write_text('[site]\nurl = "http://blog.example.com"\n')
    assert not load_settings(config).waits_for_page
    config.write_text(
        '[site]\nurl = "https://blog.example.com"\n[schedule]\nwait_for_page = false\n'
    )
    assert not load_settings(config).waits_for_page
    config.write_text('[schedule]\nwait_for_page_timeout = "2h"\n')
    assert load_settings(config).schedule.wait_for_page_timeout == 7200.0
