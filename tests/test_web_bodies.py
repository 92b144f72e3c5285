"""Request body limits on the public POST endpoints (one-click unsubscribe,
preferences, subscribe), with and without a Content-Length: a chunked body
is cut off at the same limit while it streams in, never read whole.  Real
HTTP/1.1 over a socket to a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_web_support import Store, copy_site, make_store

from newsletter.email.linktokens import make_preferences_token
from newsletter.web.public import create_public_app
from newsletter.web.server import RunningServer, start_in_thread

PUBLIC = "https://news.lantern.example.com"
FORM = "application/x-www-form-urlencoded"
# Over every limit of ours, under Starlette's own 1 MB per form field: read
# whole, such a body was a valid form and did its work.
HUGE = 768 * 1024


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    config = copy_site(tmp_path, monkeypatch)
    text = config.read_text()
    text = text.replace(
        'title = "Lantern Notes letters"\n', 'title = "Lantern Notes letters"\npublic = true\n'
    )
    config.write_text(text)
    return make_store(config)


@pytest.fixture
def server(store: Store) -> Iterator[RunningServer]:
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    with start_in_thread(app) as running:
        yield running


def post(
    server: RunningServer, path: str, head: bytes, padding: int, *, chunked: bool
) -> tuple[int, bytes]:
    """POST `head` + `padding` bytes of a harmless extra field; chunked: in 8 KB
    chunks, stopping as soon as the server answers.  Returns (status, body)."""
    body_len = len(head) + len(b"&pad=") + padding
    framing = b"Transfer-Encoding: chunked" if chunked else f"Content-Length: {body_len}".encode()
    request = (
        (
            f"POST {path} HTTP/1.1\r\nHost: news.lantern.example.com\r\nOrigin: {PUBLIC}\r\n"
            f"Content-Type: {FORM}\r\nConnection: close\r\n"
        ).encode()
        + framing
        + b"\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        pieces = [head + b"&pad=", *(b"a" * 8192 for _ in range(padding // 8192))]
        try:
            for piece in pieces:
                if select.select([sock], [], [], 0)[0]:
                    break  # answered already: a server that stopped reading
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            else:
                sock.sendall(b"0\r\n\r\n" if chunked else b"")
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered and closed while we were still sending
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass  # closed with our unread bytes in its buffer: the answer came first
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_huge_one_click_body_is_413_and_unsubscribes_nobody(
    server: RunningServer, store: Store, chunked: bool
) -> None:
    ana = store.add("ana@example.com")
    path = f"/unsubscribe/{store.token(ana)}"
    status, body = post(server, path, b"List-Unsubscribe=One-Click", HUGE, chunked=chunked)
    assert status == 413, body
    assert store.mailable(ana)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_huge_preferences_body_is_413_and_changes_nothing(
    server: RunningServer, store: Store, chunked: bool
) -> None:
    bea = store.add("bea@example.com")
    path = f"/preferences/{make_preferences_token(store.secret, bea.uid)}"
    status, body = post(server, path, b"list=garden", HUGE, chunked=chunked)
    assert status == 413, body
    assert store.mailable(bea, "letters")  # a save would have left letters


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_huge_signup_body_is_400_and_sends_nothing(
    server: RunningServer, store: Store, chunked: bool
) -> None:
    status, body = post(
        server, "/subscribe", b"email=cai%40example.com&list=letters", HUGE, chunked=chunked
    )
    assert status == 400, body
    assert b"request body too large" in body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bodies_under_the_limit_still_work_chunked_or_not(
    server: RunningServer, store: Store, chunked: bool
) -> None:
    dan = store.add("dan@example.com")
    status, _ = post(
        server,
        f"/unsubscribe/{store.token(dan)}",
        b"List-Unsubscribe=One-Click",
        8192,
        chunked=chunked,
    )
    assert status == 200 and not store.mailable(dan)
    eve = store.add("eve@example.com")
    path = f"/preferences/{make_preferences_token(store.secret, eve.uid)}"
    status, _ = post(server, path, b"list=garden", 8192, chunked=chunked)
    assert status == 200 and not store.mailable(eve, "letters")
    status, body = post(
        server, "/subscribe", b"email=fay%40example.com&list=letters", 8192, chunked=chunked
    )
    assert status == 200 and b"Check your inbox" in body
