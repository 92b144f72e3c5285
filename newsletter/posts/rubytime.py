"""Ruby's `Time.parse`, as far as blog front matter uses it.

Jekyll turns every `date:` into text and hands it to `Time.parse`
(Utils.parse_date), which is lenient: `September 8, 2014`,
`2016-07-19 (optional)`, `2016-03-21 12:00 EDT` all work.  The rules here
follow Ruby's `Date._parse` (lib date_parse.c) and `Time.zone_offset`:

* the time is `H:MM[:SS[.frac]]` with an optional `am`/`pm`; only a zone
  written right after it counts;
* a zone counts only in the forms `Time.zone_offset` knows (`+HH`, `+HHMM`,
  `+HH:MM`, `UTC`/`GMT`/`Z`, US zone names, military letters, or the site
  zone's own abbreviation); anything else (`-400`, `UTC+2`, `CET` on a
  Tokyo site) is ignored and the time is read in the site's zone — the same
  instant Jekyll gives;
* the date is `Y-M-D`, `Y/M/D`, `D.M.Y`, `YYYYMMDD`, `D Month Y` or
  `Month D, Y`; a day past the month's end rolls over (Feb 30 → Mar 2) as in
  Ruby, a month past 12 is an error.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[^-\d\s']*"
_ZONE_TEXT = r"(?:gmt|utc?)?[-+]\d+(?:[,.:]\d+(?::\d+)?)?|[A-Za-z.\s]+(?:standard|daylight)\s+time\b|[A-Za-z]+(?:\sdst)?\b"
_TIME = re.compile(
    r"(\d+):(\d+)(?::(\d+)(?:[,.](\d+))?)?\s*(?:([ap])(?:m\b|\.m\.))?"
    rf"(?:\s*({_ZONE_TEXT}))?"
    r"|\b(\d+)\s*([ap])(?:m\b|\.m\.)"
    rf"(?:\s*({_ZONE_TEXT}))?",  # a zone after "3pm" too, as Ruby's date_parse.c reads it
    re.I,
)
_EU = re.compile(rf"'?(\d+)[^-\d\s']*\s*({_MONTH})(?:\s*,?\s*('?-?\d+))?", re.I)
_US = re.compile(rf"\b({_MONTH})\s*('?\d+)[^-\d\s']*(?:\s*,?\s*('?-?\d+))?", re.I)
_ISO = re.compile(r"('?[-+]?\d+)-(\d+)-('?-?\d+)")
_SLASH = re.compile(r"('?-?\d+)/\s*('?\d+)(?:\D\s*('?-?\d+))?")
_DOT = re.compile(r"('?-?\d+)\.\s*('?\d+)\.\s*('?-?\d+)")
_DIGITS = re.compile(r"\b(\d{4})(\d{2})(\d{2})\b")
_PAREN = re.compile(r"\([^)]*\)")

# Time::ZoneOffset (hours).
_ZONES = {
    "UTC": 0, "Z": 0, "UT": 0, "GMT": 0,
    "EST": -5, "EDT": -4, "CST": -6, "CDT": -5, "MST": -7, "MDT": -6, "PST": -8, "PDT": -7,
    **{c: i + 1 for i, c in enumerate("ABCDEFGHI")},
    **{c: i + 10 for i, c in enumerate("KLM")},
    **{c: -(i + 1) for i, c in enumerate("NOPQRSTUVWXY")},
}  # fmt: skip


class RubyTimeError(ValueError):
    """`Time.parse` would raise ArgumentError for this text."""


def parse(text: str, tz: tzinfo) -> datetime:
    """The instant Ruby's `Time.parse(text)` gives with `TZ` set to `tz`."""
    rest = _PAREN.sub(" ", text)
    hour = minute = second = micro = 0
    zone: tzinfo | None = None
    match = _TIME.search(rest)
    if match:
        hour, minute, second, micro, zone = _time(match, tz)
        rest = rest[: match.start()] + " " + rest[match.end() :]
    year, month, day = _date(rest)
    if not 1 <= month <= 12 or not 1 <= day <= 31 or hour > 47 or minute > 59:
        raise RubyTimeError("argument out of range")
    second = min(second, 59)  # a leap second is clamped
    # Day 30 of February rolls over into March, as Time.local does.
    naive = datetime(year, month, 1) + timedelta(
        days=day - 1, hours=hour, minutes=minute, seconds=second, microseconds=micro
    )
    # Without a zone Ruby reads the wall clock in TZ, the site's timezone.
    return naive.replace(tzinfo=zone or tz)


def _time(match: re.Match[str], tz: tzinfo) -> tuple[int, int, int, int, tzinfo | None]:
    if match.group(7):  # "1pm"
        hour = _meridian(int(match.group(7)), match.group(8))
        zone = zone_offset(match.group(9), tz) if match.group(9) else None
        return hour, 0, 0, 0, zone
    hour, minute = int(match.group(1)), int(match.group(2))
    second = int(match.group(3) or 0)
    micro = int((match.group(4) or "0")[:6].ljust(6, "0"))
    if match.group(5):
        hour = _meridian(hour, match.group(5))
    zone = zone_offset(match.group(6), tz) if match.group(6) else None
    return hour, minute, second, micro, zone


def _meridian(hour: int, half: str) -> int:
    hour %= 12
    return hour + 12 if half.lower() == "p" else hour


def zone_offset(text: str, tz: tzinfo) -> tzinfo | None:
    """Ruby's `Time.zone_offset`: the zone, or None when Ruby does not know it."""
    zone = text.strip().upper()
    full = re.fullmatch(r"([+-])(\d\d)(:?)(\d\d)(?:\3(\d\d))?", zone)
    if full:
        seconds = (int(full.group(2)) * 60 + int(full.group(4))) * 60 + int(full.group(5) or 0)
        return _fixed(-seconds if full.group(1) == "-" else seconds)
    if re.fullmatch(r"[+-]\d\d", zone):
        return _fixed(int(zone) * 3600)
    if zone in _ZONES:
        return UTC if _ZONES[zone] == 0 else _fixed(_ZONES[zone] * 3600)
    for month in (1, 7):  # the local zone's own abbreviation (JST, CET, …)
        probe = datetime(2000, month, 1, tzinfo=tz)
        if (probe.tzname() or "").upper() == zone:
            offset = probe.utcoffset()
            return _fixed(int(offset.total_seconds())) if offset is not None else None
    return None


def _fixed(seconds: int) -> tzinfo:
    if abs(seconds) >= 86400:
        raise RubyTimeError("utc_offset out of range")
    return timezone(timedelta(seconds=seconds))


def _date(rest: str) -> tuple[int, int, int]:
    """(year, month, day) from what is left once the time is taken out."""
    for pattern, order in ((_EU, "dmy"), (_US, "mdy")):
        match = pattern.search(rest)
        if match:
            values = dict(zip(order, match.groups(), strict=True))
            month = _MONTHS.index(values["m"][:3].lower()) + 1
            if values["y"] is None:
                raise RubyTimeError("no year")  # Ruby would take this year; a post never means it
            return _year(values["y"]), month, int(values["d"].lstrip("'"))
    for pattern in (_ISO, _SLASH, _DOT):
        match = pattern.search(rest)
        if match and match.group(3) is not None:
            return _s3e(*match.groups())
    match = _DIGITS.search(rest)
    if match:
        return int(match.group(1)), int(match.group(2)), int(match.group(3))
    raise RubyTimeError("no date")


def _s3e(y: str, m: str, d: str) -> tuple[int, int, int]:
    """date_parse.c's s3e: a three-number date, year first unless the last
    number looks like the year (more than two digits or an apostrophe)."""
    if not _yearish(y) and _yearish(d):
        y, d = d, y
    return _year(y), int(m.lstrip("'")), int(d.lstrip("'"))


def _yearish(text: str) -> bool:
    return text.startswith("'") or len(text.lstrip("-+")) > 2


def _year(text: str) -> int:
    digits = text.lstrip("'")
    year = int(digits)
    if len(digits.lstrip("-+")) <= 2 and not text.startswith("-"):
        year += 1900 if year >= 69 else 2000  # Date._parse's two-digit years
    return year


class RubyTime(datetime):
    """A time that Liquid prints as Ruby's `Time#to_s`, as Jekyll shows
    `{{ page.date }}`: `2024-01-01 10:00:00 +0300`, not Python's `…+03:00`."""

    def __str__(self) -> str:
        return self.strftime("%Y-%m-%d %H:%M:%S %z").rstrip()

    @classmethod
    def of(cls, moment: datetime) -> RubyTime:
        return cls.combine(moment.date(), moment.timetz())
