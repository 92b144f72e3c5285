"""`newsletter preview` and `newsletter serve` on the command line, and the
public app under a real uvicorn (logs never show a whole token)."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from test_web_support import copy_site, make_store

from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.errors import WebError
from newsletter.web.server import bind_socket, serve_in_thread

# On SQLite and on PostgreSQL (see conftest.database_url).
pytestmark = pytest.mark.usefixtures("database_env")


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return copy_site(tmp_path, monkeypatch)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_help_texts() -> None:
    runner = CliRunner()
    preview = runner.invoke(main, ["preview", "--help"])
    assert preview.exit_code == 0
    assert "--port INTEGER RANGE" in preview.output and "--open / --no-open" in preview.output
    assert "127.0.0.1 only" in preview.output
    serve = runner.invoke(main, ["serve", "--help"])
    assert serve.exit_code == 0
    assert "one-click unsubscribe" in serve.output and "--host TEXT" in serve.output


@pytest.mark.parametrize("command", ["preview", "serve"])
def test_port_in_use_is_one_line_and_exit_1(config: Path, taken_port: int, command: str) -> None:
    args = ["--config", str(config), command, "--port", str(taken_port)]
    if command == "preview":
        args.append("--no-open")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.output == (
        f"error: cannot listen on 127.0.0.1:{taken_port}: Address already in use "
        "(try another --port)\n"
    )


@pytest.mark.parametrize("command", ["preview", "serve"])
def test_broken_configuration_exits_1(tmp_path: Path, command: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[web]\nport = 'eighty'\n")
    result = CliRunner().invoke(main, ["--config", str(bad), command])
    assert result.exit_code == 1
    assert result.output == f"error: {bad}: web.port: expected an integer, got 'eighty'\n"


@pytest.mark.parametrize(
    ("text", "key", "lowest"),
    [
        ("[web]\nport = 99999\n", "web.port", 0),
        ("[web]\nport = -1\n", "web.port", 0),
        ("[smtp]\nport = 99999\n", "smtp.port", 1),
        ("[smtp]\nport = 0\n", "smtp.port", 1),
        ("[bounces]\nport = 70000\n", "bounces.port", 1),
    ],
)
def test_a_port_out_of_range_in_the_file_names_its_key(
    tmp_path: Path, text: str, key: str, lowest: int
) -> None:
    """One line naming the key, not OverflowError's traceback from bind()."""
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    result = CliRunner().invoke(main, ["--config", str(bad), "serve"])
    assert result.exit_code == 1
    value = text.split("= ")[1].strip()
    assert result.output == (
        f"error: {bad}: {key}: must be between {lowest} and 65535, got {value}\n"
    )


@pytest.mark.parametrize(
    "host",
    ["nonsense.invalid", "203.0.113.7"],  # no such name; not this machine's address
)
def test_a_bad_host_is_blamed_not_the_port(config: Path, host: str) -> None:
    result = CliRunner().invoke(main, ["--config", str(config), "serve", "--host", host])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: cannot listen on {host}:8080: ")
    assert "--port" not in result.output
    assert result.output.endswith("(check --host or [web] host)\n")


def test_bad_port_is_a_usage_error(config: Path) -> None:
    result = CliRunner().invoke(main, ["--config", str(config), "serve", "--port", "70000"])
    assert result.exit_code == 2
    assert "Invalid value for '--port': 70000 is not in the range" in result.output


def test_bind_socket_reports_the_address() -> None:
    with pytest.raises(WebError, match=r"cannot listen on 203\.0\.113\.7:80"):
        bind_socket("203.0.113.7", 80)


def test_serve_in_thread_answers_and_logs_no_token(config: Path) -> None:
    store = make_store(config)
    row = store.add("wes@example.com")
    token = store.token(row)
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Collect()
    access = logging.getLogger("uvicorn.access")
    with serve_in_thread(load_settings(config), "127.0.0.1", 0) as running:
        access.addHandler(handler)
        try:
            assert httpx.get(f"{running.url}/healthz").json()["status"] == "ok"
            response = httpx.post(
                f"{running.url}/unsubscribe/{token}",
                data={"List-Unsubscribe": "One-Click"},
                follow_redirects=False,
            )
        finally:
            access.removeHandler(handler)
    assert response.status_code == 200
    assert not store.mailable(row)
    assert not running.thread.is_alive()
    posted = [line for line in lines if "POST /unsubscribe/" in line]
    assert len(posted) == 1
    assert token not in posted[0] and f"/unsubscribe/{token[:6]}…" in posted[0]


def _start(config: Path, args: list[str]) -> tuple[subprocess.Popen[str], str, int]:
    """The command on port 0, its banner and the port the banner names.

    Not a port picked here and bound by the command later: another process
    can take it in between."""
    env = {**os.environ, "NEWSLETTER_CONFIG": str(config), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=config.parent,
    )
    assert proc.stdout is not None
    banner = proc.stdout.readline().rstrip("\n")  # printed once the socket is bound
    match = re.search(r"on http://127\.0\.0\.1:(\d+)/", banner)
    if match is None:
        proc.kill()
        raise AssertionError((banner, *proc.communicate()))
    return proc, banner, int(match[1])


@pytest.mark.parametrize(
    ("command", "banner"),
    [
        (["preview", "--no-open"], "Preview on http://127.0.0.1:{port}/ (Ctrl-C to stop)"),
        (
            ["serve"],
            "Serving https://news.lantern.example.com on http://127.0.0.1:{port}/ (Ctrl-C to stop)",
        ),
    ],
)
def test_command_serves_until_ctrl_c(config: Path, command: list[str], banner: str) -> None:
    proc, first_line, port = _start(config, command)
    try:
        url = f"http://127.0.0.1:{port}/" + ("" if command[0] == "preview" else "healthz")
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the server never answered"
                time.sleep(0.1)
        assert response.status_code == 200
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert first_line == banner.format(port=port)
    assert "Traceback" not in err


def test_ctrl_c_with_a_page_open_stops_the_preview_cleanly(config: Path) -> None:
    """A writer's open tab holds /events (live reload): Ctrl-C must end that
    stream at once, not wait out uvicorn's grace period and print the
    cancelled task's traceback."""
    proc, _banner, port = _start(config, ["preview", "--no-open"])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                page = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the preview never answered"
                time.sleep(0.1)
        with page:
            page.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert b"event: hello" in page.recv(4096) or b"event: hello" in page.recv(4096)
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert "timeout graceful shutdown exceeded" not in err


@pytest.mark.parametrize("command", [["serve"], ["run", "--serve", "--no-watch"]])
def test_serving_without_a_configuration_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """Started in the wrong folder (a service's WorkingDirectory), `serve` made a
    new empty database and secret there and answered every reader's unsubscribe
    link with "not valid"; it must stop and say why instead."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1
    assert result.stderr == (
        "error: no newsletter.toml in this folder: give --config FILE or set "
        "$NEWSLETTER_CONFIG (without it every unsubscribe link would be refused)\n"
    )
    assert list(tmp_path.iterdir()) == []  # no database, no secret made


def test_preview_opens_the_browser_on_its_url(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--open` hands the announced URL to the browser (the server itself is
    left out here: the socket is bound before the URL is announced)."""
    import webbrowser

    import newsletter.web.server as server

    opened: list[str] = []
    done = threading.Event()

    def browser(url: str) -> bool:
        opened.append(url)
        done.set()
        return True

    def run_app(app: object, host: str, port: int, **kwargs: Any) -> None:
        kwargs["announce"](f"http://{host}:{port}/")

    monkeypatch.setattr(webbrowser, "open", browser)
    monkeypatch.setattr(server, "run_app", run_app)
    result = CliRunner().invoke(main, ["--config", str(config), "preview", "--port", "8125"])
    assert result.exit_code == 0, result.output
    assert result.output == "Preview on http://127.0.0.1:8125/ (Ctrl-C to stop)\n"
    assert done.wait(10)
    assert opened == ["http://127.0.0.1:8125/"]


def test_serve_stops_when_a_newer_newsletter_upgrades_the_database(
    config: Path, database_url: str
) -> None:
    """Schema 11 stores no uid for an import's new readers: a server of an
    older version could not find them from their links ("Link not valid"),
    so a server notices the upgrade, as the daemon does, and exits 1."""
    from sqlalchemy import create_engine

    from newsletter.store.schema import SCHEMA_VERSION, schema_version

    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(config), "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("Serving "), proc.stderr
        engine = create_engine(database_url)
        with engine.begin() as conn:  # what a newer newsletter's upgrade leaves
            conn.execute(
                schema_version.insert().values(
                    version=SCHEMA_VERSION + 1, applied_at=datetime.now(UTC)
                )
            )
        engine.dispose()
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert f"upgraded to schema version {SCHEMA_VERSION + 1} by a newer newsletter" in err
    assert err.rstrip().splitlines()[-1].startswith("error: the database was upgraded")


HANGING_CHECK = """
import time
from starlette.applications import Starlette
import newsletter.web.server as server
server.STOP_CHECK_SECONDS = 0.2

def hangs():  # a database that takes the connection and never answers
    print("checking", flush=True)
    time.sleep(60)

server.run_app(
    Starlette(), "127.0.0.1", 0, announce=lambda url: print("ready", flush=True), stop_when=hangs
)
print("stopped", flush=True)
"""


def test_ctrl_c_stops_serve_while_its_schema_check_hangs() -> None:
    """The periodic check runs beside the event loop, not in it: a check
    stuck on a database must not keep Ctrl-C (or SIGTERM) from stopping it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HANGING_CHECK],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        assert proc.stdout.readline() == "checking\n"  # a check is under way
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out) == (0, "stopped\n"), err
    assert took < 5
