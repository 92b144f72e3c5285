"""Settings: one frozen object from newsletter.toml + environment + CLI overrides.

Precedence, lowest first: built-in defaults, a Jekyll ``_config.yml`` (when
``[site] jekyll_config`` names one), ``newsletter.toml``, CLI overrides.
Secrets never live in the file: it names environment variables instead.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, time, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from newsletter.errors import ConfigError

CONFIG_ENV = "NEWSLETTER_CONFIG"
DEFAULT_CONFIG = "newsletter.toml"
DEFAULT_PERMALINK = "/:categories/:year/:month/:day/:title:output_ext"
MAX_PROCESSES = 64  # `[delivery] processes`: more is a typo, not a plan

# Jekyll's named permalink styles (https://jekyllrb.com/docs/permalinks/).
PERMALINK_STYLES = {
    "date": DEFAULT_PERMALINK,
    "pretty": "/:categories/:year/:month/:day/:title/",
    "ordinal": "/:categories/:year/:y_day/:title:output_ext",
    "weekdate": "/:categories/:year/W:week/:short_day/:title:output_ext",
    "none": "/:categories/:title:output_ext",
}


@dataclass(frozen=True)
class SiteSettings:
    title: str = "My blog"
    url: str = "http://localhost:4000"
    baseurl: str = ""
    posts_dir: Path = Path("posts")
    jekyll_config: Path | None = None
    timezone: str = "UTC"
    permalink: str = DEFAULT_PERMALINK
    excerpt_separator: str = "\n\n"
    author: str | None = None
    # The language of the emails (<html lang>, and dir="rtl" for Arabic,
    # Hebrew, Persian...): `lang` of _config.yml, else "en".
    lang: str = "en"
    # Root of the Jekyll site (for _data/authors.yml); None outside Jekyll.
    source_dir: Path | None = None
    # The whole `_config.yml` (exclude, defaults, collections, …) when the
    # site is a Jekyll site: then posts are found the way Jekyll finds them.
    jekyll: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class EmailSettings:
    from_: str = "Newsletter <newsletter@example.com>"
    reply_to: str | None = None
    subject: str = "{{ post.title }}"
    content: Literal["excerpt", "full"] = "excerpt"
    templates_dir: Path | None = None
    # CAN-SPAM wants a valid physical postal address in every commercial email;
    # printed in the footer of both parts.
    postal_address: str | None = None
    # The masthead logo: an absolute URL or a path on the site ("/images/logo.png").
    logo: str | None = None
    # A "Manage your subscription" link to the reader's own
    # <public_url>/preferences/<token> beside Unsubscribe.  None: shown when
    # some list is `public` (the page has lists to offer); true/false force it.
    preferences_link: bool | None = None
    # A post due for several lists reaches a member of more than one once
    # (the list joined first decides the footer); decided in the ledger.
    dedupe_across_lists: bool = True


@dataclass(frozen=True)
class DeliverySettings:
    transport: Literal["maildir", "smtp", "memory"] = "maildir"
    outbox_dir: Path = Path(".newsletter/outbox")
    rate_per_second: float = 0.0  # 0 = unlimited
    concurrency: int = 1
    max_attempts: int = 5
    max_per_hour: int | None = None
    max_per_day: int | None = None
    backoff_base: float = 60.0
    backoff_cap: float = 3600.0
    lease_seconds: float = 60.0
    # How SMTP connections are driven: "streams" (one event loop, each connection
    # on its own), "rounds" (lockstep on one thread, needs PIPELINING, else
    # threaded), "threaded" (a thread per connection); "auto": streams when the
    # server offers PIPELINING, else threaded.
    strategy: Literal["auto", "streams", "rounds", "threaded"] = "auto"
    # SMTP sending processes for a big mailing (each leases its own rows and
    # drives its share of the `concurrency` connections); 1: this process only.
    processes: int = 1


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "localhost"
    port: int | None = None  # None: 587 for starttls, 465 for tls, 25 for none
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password_env: str | None = None
    timeout: float = 30.0
    ca_file: Path | None = None
    allow_insecure: bool = False

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return {"starttls": 587, "tls": 465, "none": 25}[self.security]

    def password(self) -> str | None:
        """The SMTP password, read from the environment at the moment of use."""
        if not self.password_env:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise ConfigError(
                f"environment variable {self.password_env} is not set", key="smtp.password_env"
            )
        return value


@dataclass(frozen=True)
class DkimSettings:
    domain: str | None = None
    selector: str | None = None
    private_key_path: Path | None = None
    # An optional second key (dual RSA + Ed25519 signing, RFC 8463).
    second_selector: str | None = None
    second_private_key_path: Path | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.domain and self.selector and self.private_key_path)


@dataclass(frozen=True)
class BouncesSettings:
    """Where bounces go (VERP) and the mailbox they are read back from."""

    address: str | None = None  # e.g. bounces@example.com -> bounces+<token>@example.com
    maildir: Path | None = None
    imap_host: str | None = None
    port: int = 993  # IMAP over TLS only
    username: str | None = None
    password_env: str | None = None
    mailbox: str = "INBOX"
    ca_file: Path | None = None  # a private CA for the IMAP server's certificate
    processed_folder: str = "newsletter-processed"
    unparsed_folder: str = "newsletter-unparsed"
    # Soft bounces (4.x.x) suppress an address after this many within this many days.
    soft_limit: int = 3
    soft_days: int = 14

    @property
    def reads_mailbox(self) -> bool:
        return self.maildir is not None or bool(self.imap_host)

    def password(self) -> str:
        value = os.environ.get(self.password_env or "")
        if not self.password_env or value is None:
            raise ConfigError(
                f"environment variable {self.password_env or '(none named)'} is not set",
                key="bounces.password_env",
            )
        return value


@dataclass(frozen=True)
class UnsubscribeSettings:
    mailto: str | None = None
    secret_env: str = "NEWSLETTER_SECRET"


@dataclass(frozen=True)
class WebSettings:
    public_url: str = "http://127.0.0.1:8080"
    host: str = "127.0.0.1"
    port: int = 8080

    @property
    def public_base(self) -> str:
        """`public_url` without its final '/', as an ASCII URI for the links
        in emails (a header takes no IRI, RFC 3987 §3.1): the host in IDNA
        form, the rest UTF-8 percent-encoded."""
        return _ascii_uri(self.public_url.rstrip("/"))


def _ascii_uri(url: str) -> str:
    if url.isascii():
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        host = quote(host, safe="")
    host = f"[{host}]" if ":" in host else host  # IPv6
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    path = quote(parts.path, safe="/%:@!$&'()*+,;=~")
    return urlunsplit((parts.scheme, netloc, path, quote(parts.query, safe="=&%/?"), ""))


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///.newsletter/newsletter.db"
    # A PostgreSQL URL carries a password: this variable, when set, replaces
    # `url`, so the password never has to be written into the file.
    url_env: str = "NEWSLETTER_DATABASE_URL"


@dataclass(frozen=True)
class ScheduleSettings:
    scan_interval: float = 60.0
    since: datetime | None = None
    # None: true when [site] url is https (a Jekyll build may lag the post's date).
    wait_for_page: bool | None = None
    wait_for_page_timeout: float = 6 * 3600.0
    wait_for_page_retry: float = 30.0  # first retry; doubles up to 15 minutes


@dataclass(frozen=True)
class SignupSettings:
    confirm_hours: float = 48.0
    # Origins allowed to POST the JSON form from a browser (CORS); the HTML
    # form is checked against these and [web] public_url / [site] url.
    allowed_origins: tuple[str, ...] = ()
    # Abuse limits, counted in the database over a sliding window.
    per_ip_per_hour: int = 20
    per_address_per_hour: int = 3
    pending_per_address_per_day: int = 3


@dataclass(frozen=True)
class ListSettings:
    name: str
    title: str
    mode: Literal["each", "digest"] = "each"
    cron: str | None = None
    timezone: str | None = None
    tags: tuple[str, ...] = ()
    # Jekyll categories (front matter and the folders above `_posts`): one
    # list per language on a multilingual site.
    categories: tuple[str, ...] = ()
    public: bool = False  # offered on the signup form and the preferences page


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know, resolved and validated."""

    base_dir: Path = Path(".")
    config_path: Path | None = None
    site: SiteSettings = field(default_factory=SiteSettings)
    email: EmailSettings = field(default_factory=EmailSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    dkim: DkimSettings = field(default_factory=DkimSettings)
    unsubscribe: UnsubscribeSettings = field(default_factory=UnsubscribeSettings)
    bounces: BouncesSettings = field(default_factory=BouncesSettings)
    web: WebSettings = field(default_factory=WebSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    signup: SignupSettings = field(default_factory=SignupSettings)
    lists: Mapping[str, ListSettings] = field(default_factory=dict)

    @property
    def waits_for_page(self) -> bool:
        """`[schedule] wait_for_page`, defaulting to true for an https site."""
        if self.schedule.wait_for_page is not None:
            return self.schedule.wait_for_page
        return self.site.url.lower().startswith("https://")

    @property
    def public_lists(self) -> tuple[ListSettings, ...]:
        return tuple(lst for lst in self.lists.values() if lst.public)

    @property
    def state_dir(self) -> Path:
        """Where the tool keeps its own files (database, generated secret)."""
        return self.base_dir / ".newsletter"

    def get_list(self, name: str) -> ListSettings:
        try:
            return self.lists[name]
        except KeyError:
            known = ", ".join(sorted(self.lists)) or "none declared"
            raise ConfigError(
                f"unknown list {name!r} (lists in the configuration: {known})",
                path=self.config_path,
                key=f"lists.{name}",
            ) from None


# --------------------------------------------------------------------------- loading


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
    if not url:
        return settings
    return replace(settings, database=replace(settings.database, url=url))


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


def _build(raw: dict[str, Any], base_dir: Path, config_path: Path | None) -> Settings:
    unknown = set(raw) - set(_SECTIONS) - {"lists"}
    if unknown:
        raise ConfigError(
            f"unknown section [{sorted(unknown)[0]}]", path=config_path, key=sorted(unknown)[0]
        )
    site_raw = dict(raw.get("site", {}))
    jekyll, jekyll_data = _jekyll_site(site_raw, base_dir, config_path)
    parts: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        values = raw.get(name, {})
        if name == "site":
            values = {**jekyll, **site_raw}
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table", path=config_path, key=name)
        parts[name] = _section(cls, name, values, base_dir, config_path)
    if jekyll_data is not None:
        parts["site"] = replace(parts["site"], jekyll=MappingProxyType(jekyll_data))
    lists = _lists(raw.get("lists", {}), config_path)
    settings = Settings(base_dir=base_dir, config_path=config_path, lists=lists, **parts)
    _validate(settings)
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
    re-anchored to the site's timezone by `_validate`."""
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


def _lists(raw: Any, config_path: Path | None) -> dict[str, ListSettings]:
    if not isinstance(raw, dict):
        raise ConfigError("[lists] must be a table of lists", path=config_path, key="lists")
    result: dict[str, ListSettings] = {}
    for name, values in raw.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ConfigError(
                "a list name may hold letters, digits, '_', '.' and '-'",
                path=config_path,
                key=f"lists.{name}",
            )
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


MAX_CONFIRM_HOURS = 24 * 365


def _validate(settings: Settings) -> None:
    path = settings.config_path
    for key, zone in [("site.timezone", settings.site.timezone)] + [
        (f"lists.{n}.timezone", lst.timezone) for n, lst in settings.lists.items() if lst.timezone
    ]:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"unknown timezone {zone!r}", path=path, key=key) from None
    for name, lst in settings.lists.items():
        if lst.mode == "digest" and not lst.cron:
            raise ConfigError("a digest list needs a cron", path=path, key=f"lists.{name}.cron")
    if settings.delivery.concurrency < 1:
        raise ConfigError("must be at least 1", path=path, key="delivery.concurrency")
    if not 1 <= settings.delivery.processes <= MAX_PROCESSES:
        raise ConfigError(
            f"must be between 1 and {MAX_PROCESSES}", path=path, key="delivery.processes"
        )
    if not 0 < settings.signup.confirm_hours <= MAX_CONFIRM_HOURS:  # nan fails too
        raise ConfigError(
            f"must be more than 0 and at most {MAX_CONFIRM_HOURS} (a year)",
            path=path,
            key="signup.confirm_hours",
        )
    for key in ("per_ip_per_hour", "per_address_per_hour", "pending_per_address_per_day"):
        # 0 or less would refuse every signup (429, or silently no email).
        if getattr(settings.signup, key) < 1:
            raise ConfigError("must be at least 1", path=path, key=f"signup.{key}")
    for origin in settings.signup.allowed_origins:
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ConfigError(
                f"an origin is scheme://host[:port] with no path, got {origin!r}",
                path=path,
                key="signup.allowed_origins",
            )
    if settings.delivery.max_attempts < 1:
        raise ConfigError("must be at least 1", path=path, key="delivery.max_attempts")
    _validate_ports(settings)
    _validate_public_url(settings)
    _validate_bounces(settings)
    _validate_unsubscribe_mailto(settings, path)
    if not re.fullmatch(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*", settings.site.lang):
        raise ConfigError(
            f"expected a language tag like en or pt-BR, got {settings.site.lang!r}",
            path=path,
            key="site.lang",
        )
    since = settings.schedule.since
    if since is not None and since.tzinfo is None:
        anchored = since.replace(tzinfo=settings.site.tz)
        object.__setattr__(settings.schedule, "since", anchored)


# One addr-spec (no quoted local part), optionally `mailto:` before it and an
# RFC 6068 query after it: it goes verbatim into every List-Unsubscribe header.
_MAILTO = re.compile(r"(?i:mailto:)?[^\s<>\"(),;:@?]+@[^\s<>\"(),;:@?]+(\?[^\s<>\"]*)?")


def _validate_unsubscribe_mailto(settings: Settings, path: Path | None) -> None:
    mailto = settings.unsubscribe.mailto
    if mailto is not None and not _MAILTO.fullmatch(mailto):
        raise ConfigError(
            f"expected one address like unsubscribe@example.com, got {mailto!r}",
            path=path,
            key="unsubscribe.mailto",
        )


def _validate_public_url(settings: Settings) -> None:
    """Every email's List-Unsubscribe and footer links start with it, so it
    must be a URL a mailbox provider can POST to: a scheme and a host."""
    url = settings.web.public_url
    if not re.fullmatch(r"https?://[^/\s?#@]+(/[^\s?#]*)?", url):
        raise ConfigError(
            f'expected an absolute URL like "https://news.example.com", got {url!r}',
            path=settings.config_path,
            key="web.public_url",
        )


def _validate_ports(settings: Settings) -> None:
    """A port out of range is this file's error, not a traceback from bind() or
    connect() when a command starts.  Port 0 only means something to listen on."""
    ports = [
        ("web.port", settings.web.port, 0),
        ("smtp.port", settings.smtp.port, 1),
        ("bounces.port", settings.bounces.port, 1),
    ]
    for key, port, lowest in ports:
        if port is not None and not lowest <= port <= 65535:
            raise ConfigError(
                f"must be between {lowest} and 65535, got {port}",
                path=settings.config_path,
                key=key,
            )


def _validate_bounces(settings: Settings) -> None:
    b, path = settings.bounces, settings.config_path
    if b.address is not None and not re.fullmatch(r"[^@\s+]+@[^@\s]+\.[^@\s]+", b.address):
        raise ConfigError(
            "expected an address like bounces@example.com (no '+': VERP adds one)",
            path=path,
            key="bounces.address",
        )
    if b.maildir is not None and b.imap_host:
        raise ConfigError("give maildir or imap_host, not both", path=path, key="bounces.maildir")
    if b.imap_host and not b.username:
        raise ConfigError("IMAP needs a username", path=path, key="bounces.username")
    if b.soft_limit < 1 or b.soft_days < 1:
        raise ConfigError("must be at least 1", path=path, key="bounces.soft_limit")


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


def with_overrides(settings: Settings, **sections: Any) -> Settings:
    """A copy with whole sections replaced (used by tests and the CLI)."""
    return replace(settings, **sections)


def utcnow() -> datetime:
    """The current time, timezone-aware; one place so tests can move the clock."""
    from datetime import UTC

    return datetime.now(UTC)


ZERO = timedelta(0)
