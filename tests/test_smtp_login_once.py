"""A refused SMTP password is tried once per process, not once per connection
(issue 9, item 8): providers lock an account after a few failed logins, and
`send` with `concurrency = 3` used to try it four times (a PIPELINING probe,
then every worker).  Against a real aiosmtpd server with STARTTLS and AUTH."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from smtpserver import SmtpTestServer, TlsMaterial, tls_material

from newsletter.audience import members as subs
from newsletter.cli import main
from newsletter.config import SmtpSettings, load_settings
from newsletter.delivery.transports import TransportError
from newsletter.delivery.transports.smtp import SmtpTransport
from newsletter.store import open_store
from newsletter.store.mailings import counts

USER = "newsletter@fieldnotes.example.com"
POST = "how-sleep-consolidates-memory"


@pytest.fixture
def tls(tmp_path: Path) -> TlsMaterial:
    return tls_material(tmp_path)


@pytest.fixture(params=[False, True], ids=["threads", "pipelined-rounds"])
def server(request: pytest.FixtureRequest, tls: TlsMaterial) -> Iterator[SmtpTestServer]:
    with SmtpTestServer(
        tls="starttls",
        context=tls.server_context,
        auth={USER: "right-password"},
        pipelining=request.param,
    ) as started:
        yield started


def auth_config(site: Path, server: SmtpTestServer, tls: TlsMaterial) -> Path:
    text = (site / "newsletter.toml").read_text()
    text = text.replace('transport = "maildir"', 'transport = "smtp"')
    text = text.replace("concurrency = 2", "concurrency = 3")
    text = text.replace(
        'host = "smtp.example.com"',
        f'host = "127.0.0.1"\nport = {server.port}\nca_file = "{tls.ca_file}"',
    )
    text = text.replace("timeout = 30", "timeout = 5")
    path = site / "auth.toml"
    path.write_text(text)
    return path


def add_readers(config: Path, n: int) -> None:
    settings = load_settings(config)
    engine = open_store(settings)
    subs.ensure_lists(engine, settings)
    for i in range(n):
        subs.add_subscriber(engine, f"reader{i:02d}@example.org", "sample")
    engine.dispose()


def test_send_with_a_wrong_password_logs_in_once(
    sample_site: Path,
    server: SmtpTestServer,
    tls: TlsMaterial,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "login-once-secret")
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", "wrong-password")
    config = auth_config(sample_site, server, tls)
    add_readers(config, 9)
    result = CliRunner().invoke(main, ["--config", str(config), "send", POST, "--list", "sample"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert f"login as {USER} refused: 535" in result.stderr
    assert "wrong-password" not in result.output + result.stderr
    assert [(u, p) for u, p, _ in server.auth_attempts] == [(USER, "wrong-password")]
    assert server.received == []
    # Nobody was charged an attempt for the operator's mistake.
    engine = open_store(load_settings(config))
    with engine.connect() as conn:
        assert counts(conn, 1)[1] == {"queued": 9}
    engine.dispose()

    # Fixed password, same process: the login is tried again and the mail goes out.
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", "right-password")
    result = CliRunner().invoke(main, ["--config", str(config), "send", POST, "--list", "sample"])
    assert result.exit_code == 0, result.output
    assert len(server.recipients()) == 9


def test_a_refused_login_is_remembered_across_transports(
    server: SmtpTestServer, tls: TlsMaterial, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGIN_ONCE_PW", "wrong-password")
    settings = SmtpSettings(
        host="127.0.0.1",
        port=server.port,
        username=USER,
        password_env="LOGIN_ONCE_PW",
        ca_file=tls.ca_file,
        timeout=5,
    )
    messages = set()
    for _ in range(3):
        with pytest.raises(TransportError, match="refused: 535") as info:
            SmtpTransport(settings).open()
        messages.add(str(info.value))
    assert len(server.auth_attempts) == 1
    assert len(messages) == 1
    assert "not tried again" in messages.pop()


def test_a_temporary_login_refusal_slows_down_instead_of_stopping(
    sample_site: Path,
    server: SmtpTestServer,
    tls: TlsMaterial,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """454 4.7.0 to AUTH (RFC 4954: temporary, e.g. the provider's password
    backend is down) is the server saying "later", as a 454 greeting is: the
    mailing pauses and goes on, no attempt spent, instead of stopping the
    whole command on one connection's hiccup."""
    monkeypatch.setenv("NEWSLETTER_SECRET", "login-once-secret")
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", "right-password")
    config = auth_config(sample_site, server, tls)
    add_readers(config, 9)
    server.auth_busy = 2  # the PIPELINING probe's login, then a worker's
    result = CliRunner().invoke(main, ["--config", str(config), "send", POST, "--list", "sample"])
    assert result.exit_code == 0, result.output + result.stderr
    assert server.auth_busy == 0 and len(server.auth_attempts) >= 3
    assert len(server.recipients()) == 9
    engine = open_store(load_settings(config))
    with engine.connect() as conn:
        assert counts(conn, 1)[1] == {"sent": 9}
    engine.dispose()


@pytest.mark.parametrize("kind", ["threaded", "streams"])
def test_a_temporary_login_refusal_is_a_connection_failure(
    server: SmtpTestServer, tls: TlsMaterial, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Not remembered, not "not tried again": a ConnectError with the code."""
    import asyncio

    from newsletter.delivery.transports import ConnectError
    from newsletter.delivery.transports.smtp_stream import StreamSmtp

    monkeypatch.setenv("LOGIN_ONCE_PW", "right-password")
    settings = SmtpSettings(
        host="127.0.0.1",
        port=server.port,
        username=USER,
        password_env="LOGIN_ONCE_PW",
        ca_file=tls.ca_file,
        timeout=5,
    )
    server.auth_busy = 1
    with pytest.raises(ConnectError) as info:
        if kind == "threaded":
            SmtpTransport(settings).open()
        else:
            asyncio.run(StreamSmtp(settings).open())
    assert info.value.code == 454
    assert "454 4.7.0 Temporary authentication failure" in str(info.value)
    assert "not tried again" not in str(info.value)
    SmtpTransport(settings).open()  # the next login is tried, and succeeds
    assert len(server.auth_attempts) == 2
