"""Reading newsletter.toml (and a Jekyll ``_config.yml``) into `Settings`:
find the file, parse the TOML, coerce each key to its field's type, then
run the checks in `checks`."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import fields, replace
from datetime import datetime, time
from pathlib import Path
from types import MappingProxyType
from typing import Any

from newsletter.config.checks import validate
from newsletter.config.settings import (
    PERMALINK_STYLES,
    BouncesSettings,
    DatabaseSettings,
    DeliverySettings,
    DkimSettings,
    EmailSettings,
    ListSettings,
    ScheduleSettings,
    Settings,
    SignupSettings,
    SiteSettings,
    SmtpSettings,
    UnsubscribeSettings,
    WebSettings,
    list_ident,
)
from newsletter.errors import ConfigError

CONFIG_ENV = "NEWSLETTER_CONFIG"
DEFAULT_CONFIG = "newsletter.toml"


def find_config(explicit: Path | str | None = None) -> Path | None:
    """The configuration file: --config, then $NEWSLETTER_CONFIG, then ./newsletter.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    default = Path(DEFAULT_CONFIG)
    return default if default.exists() else None


def load_settings(
    path: Path | str | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Read, merge and validate the configuration into one frozen `Settings`."""
    config_path = find_config(path)
    raw: dict[str, Any] = {}
    if config_path is not None:
        raw = _read_toml(config_path)
    base_dir = config_path.parent if config_path is not None else Path(".")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})[key] = value
    return _database_from_env(_build(raw, base_dir, config_path))


def _database_from_env(settings: Settings) -> Settings:
    url = os.environ.get(settings.database.url_env, "").strip()
    if url:
        settings = replace(settings, database=replace(settings.database, url=url))
    _kept_on_disk(settings, url and settings.database.url_env)
    return settings


# sqlite://, sqlite:///:memory: (any driver, any query): a database in memory.
_IN_MEMORY = re.compile(r"sqlite(\+\w+)?://(/(:memory:)?)?(\?.*)?", re.IGNORECASE)


def _kept_on_disk(settings: Settings, env: str) -> None:
    """The ledger must outlive the command: in memory it went with every
    run's end, and each run mailed everything again while saying "Sent 0"."""
    if _IN_MEMORY.fullmatch(settings.database.url):
        where = f" (from ${env})" if env else ""
        raise ConfigError(
            f"an in-memory SQLite database{where} forgets every mailing when the command "
            "ends, and the next run would mail everything again: give a file, "
            'e.g. "sqlite:///.newsletter/newsletter.db"',
            path=settings.config_path,
            key="database.url",
        )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("configuration file not found", path=path) from None
    except tomllib.TOMLDecodeError as exc:
        line = _toml_error_line(str(exc))
        raise ConfigError(f"invalid TOML: {exc}", path=path, line=line) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("not UTF-8 text (TOML files are UTF-8)", path=path) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=path) from exc


def _toml_error_line(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


_SECTIONS = {
    "site": SiteSettings,
    "email": EmailSettings,
    "delivery": DeliverySettings,
    "smtp": SmtpSettings,
    "dkim": DkimSettings,
    "unsubscribe": UnsubscribeSettings,
    "bounces": BouncesSettings,
    "web": WebSettings,
    "database": DatabaseSettings,
    "schedule": ScheduleSettings,
    "signup": SignupSettings,
}


# Fields of `SiteSettings` that come from `[site] jekyll_config` alone (the
# site's folder and its whole _config.yml), never keys of the file.
_DERIVED_SITE_KEYS = frozenset({"source_dir", "jekyll"})


def _build(raw: dict[str, Any], base_dir: Path, config_path: Path | None) -> Settings:
    unknown = set(raw) - set(_SECTIONS) - {"lists"}
    if unknown:
        raise ConfigError(
            f"unknown section [{sorted(unknown)[0]}]", path=config_path, key=sorted(unknown)[0]
        )
    for name in _SECTIONS:  # `site = 1` or `[[site]]`: no table, before any is read
        if not isinstance(raw.get(name, {}), dict):
            raise ConfigError(f"[{name}] must be a table", path=config_path, key=name)
    site_raw = dict(raw.get("site", {}))
    for key in sorted(_DERIVED_SITE_KEYS & set(site_raw)):
        raise ConfigError(f"unknown key {key!r}", path=config_path, key=f"site.{key}")
    jekyll, jekyll_data = _jekyll_site(site_raw, base_dir, config_path)
    parts: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        values = raw.get(name, {})
        if name == "site":
            values = {**jekyll, **site_raw}
        parts[name] = _section(cls, name, values, base_dir, config_path)
    if jekyll_data is not None:
        parts["site"] = replace(parts["site"], jekyll=MappingProxyType(jekyll_data))
    lists = _lists(raw.get("lists", {}), config_path)
    settings = Settings(base_dir=base_dir, config_path=config_path, lists=lists, **parts)
    validate(settings)
    return settings


def _section(
    cls: type, name: str, values: Mapping[str, Any], base_dir: Path, config_path: Path | None
) -> Any:
    known = {f.name.rstrip("_"): f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        f = known.get(key)
        if f is None:
            raise ConfigError(f"unknown key {key!r}", path=config_path, key=f"{name}.{key}")
        kwargs[f.name] = _coerce(f"{name}.{key}", f.type, value, base_dir, config_path)
    for f in fields(cls):
        # A default folder (posts/, .newsletter/outbox) lies beside the
        # configuration as a written one does, not in whatever folder
        # `--config` was given from.
        if f.name not in kwargs and isinstance(f.default, Path) and not f.default.is_absolute():
            kwargs[f.name] = base_dir / f.default
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the loop above
        raise ConfigError(str(exc), path=config_path, key=name) from exc


_DURATIONS = frozenset(
    {"schedule.scan_interval", "schedule.wait_for_page_timeout", "schedule.wait_for_page_retry"}
)


def _coerce(key: str, type_: Any, value: Any, base_dir: Path, config_path: Path | None) -> Any:
    """Turn a TOML value into the field's type, or say which key is wrong."""
    text = str(type_)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"expected {expected}, got {value!r}", path=config_path, key=key)

    if "Path" in text:
        if not isinstance(value, str):
            raise bad("a path")
        path = Path(value).expanduser()
        return path if path.is_absolute() else base_dir / path
    if key == "schedule.since":
        return parse_since(value, key, config_path)
    if key in _DURATIONS:
        return parse_duration(value, key, config_path)
    if key == "delivery.processes":
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise bad('"auto" or a whole number of processes')
    if text.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return float(value)
    if text.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if text in ("bool", "bool | None"):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if "Literal" in text:
        allowed = re.findall(r"'([^']+)'", text)
        if value not in allowed:
            raise bad(" or ".join(repr(a) for a in allowed))
        return value
    if "tuple" in text:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return tuple(value)
    if not isinstance(value, str):
        raise bad("a string")
    return value


def parse_duration(value: Any, key: str = "duration", path: Path | None = None) -> float:
    """Seconds from 60, 1.5, "90s", "5m", "2h"."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", value)
        if match:
            scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]
            seconds = float(match.group(1)) * scale
            if seconds > 0:
                return seconds
    raise ConfigError(
        f'expected a positive duration like 60, "90s" or "5m", got {value!r}', path=path, key=key
    )


def parse_since(value: Any, key: str = "schedule.since", path: Path | None = None) -> datetime:
    """A date or ISO 8601 datetime; naive values are read as UTC here and
    re-anchored to the site's timezone by `checks.validate`."""
    if isinstance(value, datetime):
        return value
    if hasattr(value, "year") and not isinstance(value, datetime):  # datetime.date
        return datetime.combine(value, time())
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
    raise ConfigError(f"expected a date or ISO 8601 datetime, got {value!r}", path=path, key=key)


def _one_id_per_list(lists: dict[str, ListSettings], name: str, config_path: Path | None) -> None:
    """RFC 2919: a List-Id names one list; readers' filters sort mail by it."""
    ident = list_ident(name)
    for other in lists:
        if list_ident(other) == ident:
            raise ConfigError(
                f"lists {other!r} and {name!r} would share one List-Id ({ident}.<site host>): "
                "rename one",
                path=config_path,
                key=f"lists.{name}",
            )


def _lists(raw: Any, config_path: Path | None) -> dict[str, ListSettings]:
    if not isinstance(raw, dict):
        raise ConfigError("[lists] must be a table of lists", path=config_path, key="lists")
    result: dict[str, ListSettings] = {}
    for name, values in raw.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ConfigError(
                "a list name starts with an ASCII letter or digit and holds only those, "
                "'_', '.' and '-'",
                path=config_path,
                key=f"lists.{name}",
            )
        _one_id_per_list(result, name, config_path)
        if not isinstance(values, dict):
            raise ConfigError("must be a table", path=config_path, key=f"lists.{name}")
        values = {"title": name, **values}
        allowed = {f.name for f in fields(ListSettings)} - {"name"}
        for key in values:
            if key not in allowed:
                raise ConfigError(
                    f"unknown key {key!r}", path=config_path, key=f"lists.{name}.{key}"
                )
        kwargs = {
            f.name: _coerce(
                f"lists.{name}.{f.name}", f.type, values[f.name], Path("."), config_path
            )
            for f in fields(ListSettings)
            if f.name in values
        }
        result[name] = ListSettings(name=name, **kwargs)
    return result


# --------------------------------------------------------------------------- Jekyll


def _jekyll_site(
    site_raw: Mapping[str, Any], base_dir: Path, config_path: Path | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Site values taken from a Jekyll `_config.yml`, in newsletter.toml's
    terms, and the whole `_config.yml` (None when there is none)."""
    value = site_raw.get("jekyll_config")
    if value is None or value == "":
        return {}, None
    if not isinstance(value, str):
        raise ConfigError(
            f"expected a path to a _config.yml, got {value!r}",
            path=config_path,
            key="site.jekyll_config",
        )
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base_dir / path
    data = read_jekyll_config(path)
    source = path.parent / str(data.get("source", "."))
    found: dict[str, Any] = {"posts_dir": str(source / "_posts"), "source_dir": str(source)}
    for key in ("url", "baseurl", "title", "timezone", "excerpt_separator", "lang"):
        if isinstance(data.get(key), str):
            found[key] = data[key]
    permalink = data.get("permalink")
    if isinstance(permalink, str):
        found["permalink"] = PERMALINK_STYLES.get(permalink, permalink)
    author = data.get("author")
    if isinstance(author, dict):
        author = author.get("name")
    if isinstance(author, str):
        found["author"] = author
    if "lang" not in found and isinstance(data.get("locale"), str):
        found["lang"] = data["locale"].replace("_", "-")  # jekyll-seo-tag's en_US
    return found, data


def read_jekyll_config(path: Path) -> dict[str, Any]:
    import yaml  # only a Jekyll site pays for it (a warm listing reads no YAML)

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError("Jekyll configuration not found", path=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc}", path=path) from exc
    except (OSError, ValueError) as exc:  # a folder, no permission, a NUL in the name
        raise ConfigError(f"cannot read the Jekyll configuration: {exc}", path=path) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {exc}", path=path, line=line) from exc
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top level", path=path)
    return data
