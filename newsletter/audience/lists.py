"""The lists declared in the configuration, made rows of the store.

Apart from `members` (subscribers, memberships, their dataclasses and
queries): every daemon pass ensures the lists, and a pass with nothing to
send needs nothing else of the audience.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.exc import SQLAlchemyError

from newsletter.config import Settings
from newsletter.errors import StoreError, database_reason
from newsletter.store import insert_or_ignore, now
from newsletter.store.schema import lists

__all__ = ["ensure_lists"]


def ensure_lists(bind: Engine | Connection, settings: Settings) -> None:
    """Insert the lists declared in `settings.lists`, update changed titles.

    Lists removed from the configuration are kept (their history matters).
    """
    try:
        if isinstance(bind, Engine):
            with bind.begin() as conn:
                _ensure(conn, settings)
        else:
            _ensure(bind, settings)
    except SQLAlchemyError as exc:
        raise StoreError(f"database write failed: {database_reason(exc)}") from exc


def _ensure(conn: Connection, settings: Settings) -> None:
    existing = {r.name: r.title for r in conn.execute(select(lists.c.name, lists.c.title))}
    for name, declared in settings.lists.items():
        if name not in existing:
            # Another process (a second host starting) may be creating it too.
            values = {"name": name, "title": declared.title, "created_at": now()}
            insert_or_ignore(conn, lists, values, ("name",))
        elif existing[name] != declared.title:
            conn.execute(update(lists).where(lists.c.name == name).values(title=declared.title))
