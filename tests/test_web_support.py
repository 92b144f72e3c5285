"""Helpers shared by the web tests (no tests here): the fixture site, a store
with subscribers, and mailings that really went out through the memory transport."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import pytest
from sqlalchemy import Engine

from newsletter.audience import members as subs
from newsletter.config import Settings, load_settings
from newsletter.delivery.mailings import deliver_mailing, plan_mailing
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.email.tokens import make_token
from newsletter.posts.collection import load_posts
from newsletter.store import open_store
from newsletter.web import pages

FIXTURE_SITE = Path(__file__).resolve().parent / "fixtures" / "web" / "site"
SECRET = "lantern-web-test-secret"
SECRET_ENV = "LANTERN_TEST_SECRET"


def copy_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fixture site copied to tmp_path/site; returns its newsletter.toml."""
    site = tmp_path / "site"
    shutil.copytree(FIXTURE_SITE, site)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)
    return site / "newsletter.toml"


@dataclass
class Store:
    settings: Settings
    engine: Engine
    secret: bytes

    def add(self, email: str, list_name: str = "letters") -> subs.SubscriberRow:
        return subs.add_subscriber(self.engine, email, list_name)

    def token(self, row: subs.SubscriberRow, list_name: str = "letters") -> str:
        return make_token(self.secret, row.uid, list_name)

    def status(self, row: subs.SubscriberRow) -> str:
        found = subs.get_by_id(self.engine, row.id)
        assert found is not None
        return found.status

    def left(self, row: subs.SubscriberRow) -> set[str]:
        """Lists this subscriber has unsubscribed from."""
        return {n for n, at in subs.membership_lists(self.engine, row.id).items() if at}

    def mailable(self, row: subs.SubscriberRow, list_name: str = "letters") -> bool:
        return subs.is_mailable(self.engine, row.id, list_name)

    def send(self, post_id: str, list_name: str = "letters") -> MemoryTransport:
        """Plan and deliver a mailing for real (memory transport)."""
        transport = MemoryTransport()
        mailing_id = plan_mailing(self.engine, self.settings, post_id, list_name)
        deliver_mailing(
            self.engine, self.settings, mailing_id, load_posts(self.settings), transport=transport
        )
        return transport


def make_store(config: Path) -> Store:
    settings = load_settings(config)
    engine = open_store(settings)
    subs.ensure_lists(engine, settings)
    return Store(settings, engine, SECRET.encode())


# --------------------------------------------------------------------------- kept templates


def as_a_new_process() -> None:
    """Only what is on disk is left: the pages' environments are made again."""
    pages.environment.cache_clear()


def refuse_to_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any template compiled from now on fails the test (they must come from jinja/)."""

    def compile_(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a template was compiled")

    monkeypatch.setattr(jinja2.Environment, "compile", compile_)


def edit_page(monkeypatch: pytest.MonkeyPatch, name: str, edit: Callable[[str], str]) -> None:
    """The pages ship inside the package: an edit (an upgrade, a developer's
    change) reaches Jinja2 as new source from the same file name."""
    source_of = jinja2.PackageLoader.get_source

    def get_source(
        self: jinja2.PackageLoader, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        source, filename, uptodate = source_of(self, environment, template)
        return (edit(source) if template == name else source), filename, uptodate

    monkeypatch.setattr(jinja2.PackageLoader, "get_source", get_source)
