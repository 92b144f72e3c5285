"""The frozen settings: one dataclass per section of newsletter.toml, and
`Settings` holding them all.  Reading the file into them is `loading`;
the checks across keys are `checks`."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

from newsletter.errors import ConfigError

DEFAULT_PERMALINK = "/:categories/:year/:month/:day/:title:output_ext"

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
    def home(self) -> str:
        """The blog's front page: `url` and `baseurl` (Jekyll's `site.url` +
        `site.baseurl`), `https://user.github.io/repo/` for a project site;
        `url` as given when there is no baseurl."""
        base = self.baseurl.strip("/")
        return f"{self.url.rstrip('/')}/{base}/" if base else self.url

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
    # threaded), "threaded" (a thread per connection); "auto": streams for two
    # connections or more, and for one when the server offers PIPELINING, else
    # threaded.
    strategy: Literal["auto", "streams", "rounds", "threaded"] = "auto"
    # SMTP sending processes for a big mailing (each leases its own rows and
    # drives its share of the `concurrency` connections); 1: this process only;
    # "auto": 2 for a big mailing over several connections with
    # strategy = "threaded" on two cores, else 1
    # (`delivery.processes.process_count`); not the default: it paid only on
    # a busy machine (docs/delivery.md, "A second sending process").
    processes: int | Literal["auto"] = 1
    # The streams' event loop: "auto" takes uvloop's when it is installed (it
    # is a dependency except on Windows; measured: docs/delivery.md), else
    # asyncio's own; "asyncio" always asyncio's.
    event_loop: Literal["auto", "asyncio"] = "auto"


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


def list_ident(name: str) -> str:
    """A list name as its List-Id writes it: lower case, every run of other
    characters than letters, digits and '-' one '-' (config refuses two lists
    that this makes equal: one id per list)."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-").lower() or "list"


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


def with_overrides(settings: Settings, **sections: Any) -> Settings:
    """A copy with whole sections replaced (used by tests and the CLI)."""
    return replace(settings, **sections)


def utcnow() -> datetime:
    """The current time, timezone-aware; one place so tests can move the clock."""
    from datetime import UTC

    return datetime.now(UTC)


ZERO = timedelta(0)
