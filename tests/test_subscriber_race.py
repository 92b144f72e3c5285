"""Hosts adding the same new address at the same instant (PostgreSQL).

`subscribers` had two unique indexes on an address (email and email_key; a
SQLite file made before schema 6 still has both).  ON CONFLICT (email_key)
covered only the second: a racing insert that reached the email index first
raised a unique violation instead of finding the winner's row (seen once in
~21 rounds of the three-process test in test_scale_out.py).  Since schema 6
email_key is the only one; the adds must still all succeed.
"""

from __future__ import annotations

import threading

from newsletter.audience import members as subs
from newsletter.config import ListSettings, Settings
from newsletter.store import open_url

SETTINGS = Settings(lists={"news": ListSettings("news", "News")})


def test_racing_adds_of_one_address_all_succeed(pg_url: str) -> None:
    engine = open_url(pg_url)
    subs.ensure_lists(engine, SETTINGS)
    errors: list[BaseException] = []
    rounds, threads = 60, 6

    def add(i: int, start: threading.Barrier) -> None:
        start.wait()
        try:
            subs.add_subscriber(engine, f"race{i}@example.org", "news")
        except BaseException as exc:  # collected: the assertion below names them
            errors.append(exc)

    for i in range(rounds):
        start = threading.Barrier(threads)
        workers = [threading.Thread(target=add, args=(i, start)) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    assert [str(e).splitlines()[0] for e in errors] == []
    with engine.connect() as conn:
        count = conn.exec_driver_sql("SELECT count(*) FROM subscribers").scalar()
    assert count == rounds
