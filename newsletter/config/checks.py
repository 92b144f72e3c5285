"""The checks a loaded configuration must pass, key by key and across
sections; each failure is a `ConfigError` naming the key."""

from __future__ import annotations

import re
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from newsletter.config.settings import Settings
from newsletter.errors import ConfigError

MAX_PROCESSES = 64  # `[delivery] processes`: more is a typo, not a plan
MAX_CONFIRM_HOURS = 24 * 365


def validate(settings: Settings) -> None:
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
    processes = settings.delivery.processes
    if processes != "auto" and not 1 <= processes <= MAX_PROCESSES:
        raise ConfigError(
            f'must be "auto" or between 1 and {MAX_PROCESSES}', path=path, key="delivery.processes"
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
    _validate_ranges(settings, path)
    _validate_ports(settings)
    _validate_public_url(settings)
    _validate_site_url(settings)
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


DAY = 86400.0
MAX_CONCURRENCY = 1000  # connections (threads, for the threaded strategy)


def _ranges(settings: Settings) -> list[tuple[str, float | None, float, float, str]]:
    """(key, value, lowest, highest, unit) of every number with a sensible range."""
    schedule, delivery = settings.schedule, settings.delivery
    return [
        ("schedule.scan_interval", schedule.scan_interval, 0.1, DAY, "s"),
        ("schedule.wait_for_page_timeout", schedule.wait_for_page_timeout, 0, 30 * DAY, "s"),
        ("schedule.wait_for_page_retry", schedule.wait_for_page_retry, 0.1, DAY, "s"),
        ("delivery.rate_per_second", delivery.rate_per_second, 0, 1e6, ""),
        ("delivery.concurrency", delivery.concurrency, 1, MAX_CONCURRENCY, ""),
        ("delivery.max_per_hour", delivery.max_per_hour, 1, float("inf"), ""),
        ("delivery.max_per_day", delivery.max_per_day, 1, float("inf"), ""),
        ("delivery.backoff_base", delivery.backoff_base, 0, 30 * DAY, "s"),
        ("delivery.backoff_cap", delivery.backoff_cap, 0, 30 * DAY, "s"),
        ("delivery.lease_seconds", delivery.lease_seconds, 0.1, DAY, "s"),
        ("smtp.timeout", settings.smtp.timeout, 0.1, 3600, "s"),
    ]


def _validate_ranges(settings: Settings, path: Path | None) -> None:
    """Out of range, a number stopped the command with a traceback (an
    infinite interval overflowed the scheduler, 100,000 connections could
    not get their threads), spun (a 1 ms scan) or stalled for ever (an
    hourly cap of 0 paused every mailing); NaN compares false to everything,
    so it fails here too."""
    for key, value, low, high, unit in _ranges(settings):
        if value is None or low <= value <= high:
            continue
        top = "" if high == float("inf") else f" and at most {high:g}{unit}"
        raise ConfigError(f"must be at least {low:g}{unit}{top}, got {value!r}", path=path, key=key)


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


# A scheme and a host, then any path: what every link of an email starts with.
_ABSOLUTE_URL = r"https?://[^/\s?#@]+(/[^\s?#]*)?"


def _validate_public_url(settings: Settings) -> None:
    """Every email's List-Unsubscribe and footer links start with it, so it
    must be a URL a mailbox provider can POST to: a scheme and a host."""
    url = settings.web.public_url
    if not re.fullmatch(_ABSOLUTE_URL, url):
        raise ConfigError(
            f'expected an absolute URL like "https://news.example.com", got {url!r}',
            path=settings.config_path,
            key="web.public_url",
        )


def _validate_site_url(settings: Settings) -> None:
    """Every post link and image in an email starts with it: without a scheme
    and a host ("blog.example.com", or a Jekyll `url: ""`) they would all be
    relative, which no mail reader can follow."""
    url = settings.site.url
    if not re.fullmatch(_ABSOLUTE_URL, url):
        where = (
            " (from _config.yml: set url: there, or [site] url in newsletter.toml)"
            if settings.site.jekyll is not None
            else ""
        )
        raise ConfigError(
            f'expected an absolute URL like "https://blog.example.com", got {url!r}{where}',
            path=settings.config_path,
            key="site.url",
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
    for key, value in (("soft_limit", b.soft_limit), ("soft_days", b.soft_days)):
        if value < 1:
            raise ConfigError("must be at least 1", path=path, key=f"bounces.{key}")
