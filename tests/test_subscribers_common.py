"""Shared helpers for the subscriber tests (holds no tests itself)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from newsletter.audience.importer import ImportCounts
from newsletter.audience.members import ensure_lists, get_by_email, is_mailable
from newsletter.audience.subscribers import import_file, members
from newsletter.config import ListSettings, Settings
from newsletter.store import open_url

FIXTURES = Path(__file__).parent / "fixtures" / "subscribers"


def make_settings(*names: str, base_dir: Path = Path(".")) -> Settings:
    return Settings(
        base_dir=base_dir, lists={n: ListSettings(n, n.title()) for n in names or ("news",)}
    )


def make_engine(tmp_path: Path, settings: Settings) -> Engine:
    engine = open_url(f"sqlite:///{tmp_path / 'store.db'}")
    ensure_lists(engine, settings)
    return engine


@dataclass(frozen=True)
class Seen:
    email: str
    name: str
    status: str
    mailable: bool
    attributes: dict[str, Any]


def seen(engine: Engine, email: str, list_name: str = "news") -> Seen:
    row = get_by_email(engine, email)
    assert row is not None, f"{email} was not imported"
    return Seen(
        row.email, row.name, row.status, is_mailable(engine, row.id, list_name), row.attributes
    )


def statuses(engine: Engine, list_name: str = "news") -> dict[str, str]:
    return {m.email: m.status for m in members(engine, list_name)}


def run_import(
    engine: Engine, settings: Settings, path: Path, list_name: str = "news", **kwargs: Any
) -> ImportCounts:
    return import_file(engine, settings, path, list_name, **kwargs)
