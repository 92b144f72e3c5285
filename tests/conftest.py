"""Shared fixtures: a sample site in a temporary folder."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from smtpserver import SmtpTestServer

from newsletter.delivery.transports.logins import LOGINS

ROOT = Path(__file__).resolve().parent.parent


def _theme_from_this_checkout() -> None:
    """Load `newsletter.templates` (the theme) from this checkout's templates/.

    An editable install maps that package to wherever it was installed from,
    so tests run from another worktree would read another theme; with a
    regular install (CI) this loads the same folder the mapping names.
    """
    import importlib.util
    import sys

    theme = ROOT / "templates"
    spec = importlib.util.spec_from_file_location(
        "newsletter.templates", theme / "__init__.py", submodule_search_locations=[str(theme)]
    )
    if spec is None or spec.loader is None or "newsletter.templates" in sys.modules:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["newsletter.templates"] = module
    spec.loader.exec_module(module)


_theme_from_this_checkout()


@pytest.fixture
def sample_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the bundled sample (config, posts, subscribers) as the cwd."""
    for name in ("newsletter.toml", "posts", "subscribers"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name)
        else:
            shutil.copy(src, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)
    return tmp_path


@pytest.fixture
def smtp_server() -> Iterator[SmtpTestServer]:
    """A started, plain (no TLS, no AUTH) scriptable SMTP server on 127.0.0.1.

    See tests/smtpserver.py: `server.script(addr, "451 4.3.0 Try later")`,
    `server.received`, `server.settings_overrides()`.
    """
    server = SmtpTestServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _fresh_smtp_logins() -> Iterator[None]:
    """Each test starts with no remembered SMTP login (a port number, user and
    password can come back in a later test against a new server)."""
    LOGINS.forget()
    yield
    LOGINS.forget()
