"""Helpers for tests that hold a sender mid-mailing (test_lease_stall, test_unsubscribe_midway)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, select

from newsletter.config import Settings
from newsletter.delivery.mailings import deliver_mailing
from newsletter.delivery.report import DeliveryReport
from newsletter.posts.collection import load_posts
from newsletter.store.schema import deliveries

READERS = [f"r{i:03d}@example.org" for i in range(6)]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Until `condition()`; a bound on a hang, not a timing the test relies on."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Sending:
    """`deliver_mailing` on a thread of its own, so the test acts while it sends."""

    def __init__(self, engine: Engine, settings: Settings, mailing_id: int) -> None:
        self.report: DeliveryReport | None = None
        self.error: BaseException | None = None
        posts = load_posts(settings)

        def run() -> None:
            try:
                self.report = deliver_mailing(engine, settings, mailing_id, posts)
            except BaseException as exc:  # raised in the test by `finish`
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def finish(self) -> DeliveryReport:
        self.thread.join(60)
        assert not self.thread.is_alive(), "the pass did not end"
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report


def status_of(engine: Engine, email: str) -> Any:
    with engine.connect() as conn:
        return conn.scalar(select(deliveries.c.status).where(deliveries.c.email == email))
