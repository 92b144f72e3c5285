"""Every date form Jekyll accepts gives the instant Jekyll gives.

Jekyll 4.3 reads a front-matter date in two steps: YAML first (a timestamp
with seconds becomes a Time, UTC when it names no zone), then Ruby's
`Time.parse` of its text in the site's zone.  The expectations below are
Ruby's own answers (TZ=Europe/Istanbul); `test_ruby_agrees` asks Ruby again
when it is installed, so the table cannot drift from the oracle.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from newsletter.errors import PostError
from newsletter.posts.jekyll import parse_date

TZ = ZoneInfo("Europe/Istanbul")

CASES = [
    ("September 8, 2014", "2014-09-08T00:00:00+03:00"),
    ("8 September 2014", "2014-09-08T00:00:00+03:00"),
    ("Nov 4 2024", "2024-11-04T00:00:00+03:00"),
    ("4 Nov 24", "2024-11-04T00:00:00+03:00"),
    ("2016-03-21 12:00 EDT", "2016-03-21T18:00:00+02:00"),
    ("2016-07-19 (optional)", "2016-07-19T00:00:00+03:00"),
    # Ruby takes a zone only right after the time: this one is ignored.
    ("2023-01-29 18:30:22 2023 -0800", "2023-01-29T18:30:22+03:00"),
    # `-400` is no zone Ruby knows: the wall clock in the site's zone.
    ("2016-06-17 12:00-400", "2016-06-17T12:00:00+03:00"),
    ("2024-11-04 10:00 +3", "2024-11-04T10:00:00+03:00"),
    ("2020-01-05 10:00 PST", "2020-01-05T21:00:00+03:00"),
    # A zone after a bare "3pm" counts too (Ruby's date_parse.c: one zone
    # group after either form of the time).
    ("2014-09-08 3pm PST", "2014-09-09T02:00:00+03:00"),
    ("2014-09-08 3 p.m. -0100", "2014-09-08T19:00:00+03:00"),
    ("2020-01-05 10:00 TRT", "2020-01-05T10:00:00+03:00"),
    ("2020-01-05 10:00 CET", "2020-01-05T10:00:00+03:00"),
    ("2024-11-04 10:00 +03:00:30", "2024-11-04T09:59:30+03:00"),
    ("Mon, 06 Jan 2020 10:00:00 +0000", "2020-01-06T13:00:00+03:00"),
    ("2020-01-05 1pm", "2020-01-05T13:00:00+03:00"),
    ("2020-01-05 10:30 pm", "2020-01-05T22:30:00+03:00"),
    ("31.12.2019", "2019-12-31T00:00:00+03:00"),
    ("2014/09/08", "2014-09-08T00:00:00+03:00"),
    ("20241104", "2024-11-04T00:00:00+03:00"),
    ("2024-11-04", "2024-11-04T00:00:00+03:00"),
    ("2024-11-04 10:00", "2024-11-04T10:00:00+03:00"),
    ("2024-11-04 09:30:00 +0300", "2024-11-04T09:30:00+03:00"),
    # YAML timestamps: no zone means UTC, the fraction is dropped, parts roll over.
    ("2024-11-04 10:00:00", "2024-11-04T13:00:00+03:00"),
    ("2024-11-04T10:00:00", "2024-11-04T13:00:00+03:00"),
    ("2024-11-04 10:00:00.5", "2024-11-04T13:00:00+03:00"),
    ("2024-11-04 10:00:00 +03", "2024-11-04T10:00:00+03:00"),
    ("2022-10-01 08:00:00.250 +02:00", "2022-10-01T09:00:00+03:00"),
    ("2024-11-04 24:00:00", "2024-11-05T03:00:00+03:00"),
    ("2024-11-04 10:00:60", "2024-11-04T13:01:00+03:00"),
    ("2024-11-04 10:00:00 +1900", "2024-11-03T18:00:00+03:00"),
    # A day past the month's end rolls over, as Time.local does.
    ("2024-02-30", "2024-03-01T00:00:00+03:00"),
    ("2023-02-29 10:00", "2023-03-01T10:00:00+03:00"),
    ("2024-11-04 25:00:00 +0300", "2024-11-05T01:00:00+03:00"),
    ("2024-02-31 10:00:00", "2024-03-02T13:00:00+03:00"),
    ("2024-11-04 23:59:60", "2024-11-05T03:00:00+03:00"),
    # Quoted, it is a string to YAML: Time.parse reads it in the site's zone.
    ('"2024-11-04 10:00:00"', "2024-11-04T10:00:00+03:00"),
    ("'2024-11-04T10:00:00'", "2024-11-04T10:00:00+03:00"),
    ('"2024-11-04 10:00:00 +03"', "2024-11-04T10:00:00+03:00"),
]
# YAML's timestamp past Time.utc's range (hour 24 only as 24:00:00, second
# 60 at most) fails Jekyll's build: a typo must not mail at the wrong time.
FAILING = [
    "next tuesday",
    "12/31/2019",
    "2020-13-45",
    "garbage",
    "2024-11-04 25:00:00",
    "2024-11-04 10:60:00",
    "2024-11-04 24:00:01",
    "2024-11-04 23:59:61",
    "2024-11-32 10:00:00",
    "2024-11-00 10:00:00",
]


def _parse(text: str, line: int | None = None) -> datetime:
    """`text` as written after `date:`; a quoted one is a YAML string."""
    quoted = text[:1] in ("'", '"')
    return parse_date(text.strip("'\"") if quoted else text, TZ, line=line, quoted=quoted)


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_date_forms(text: str, expected: str) -> None:
    moment = _parse(text)
    assert moment == datetime.fromisoformat(expected)  # the same instant
    assert moment.astimezone(TZ).isoformat() == expected


@pytest.mark.parametrize("text", FAILING)
def test_what_jekyll_rejects_is_one_clear_error(text: str) -> None:
    with pytest.raises(PostError) as info:
        _parse(text, line=3)
    assert info.value.line == 3
    assert f"{text!r} as a date (Jekyll fails on it too)" in info.value.message
    assert "\n" not in info.value.message


RUBY = """
require "yaml"; require "time"; require "date"
STDIN.each_line do |line|
  line = line.chomp
  begin
    v = YAML.safe_load("date: #{line}", permitted_classes: [Date, Time])["date"]
    puts Time.parse(v.to_s).localtime.strftime("%Y-%m-%dT%H:%M:%S%:z")
  rescue ArgumentError, Psych::Exception
    puts "ERROR"
  end
end
"""


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed")
def test_ruby_agrees() -> None:
    texts = [t for t, _ in CASES] + FAILING
    done = subprocess.run(
        ["ruby", "-e", RUBY],
        input="\n".join(texts) + "\n",
        capture_output=True,
        text=True,
        env={"TZ": "Europe/Istanbul", "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=True,
    )
    answers = dict(zip(texts, done.stdout.splitlines(), strict=True))
    for text, expected in CASES:
        assert answers[text] == expected, text
    for text in FAILING:
        assert answers[text] == "ERROR", text
