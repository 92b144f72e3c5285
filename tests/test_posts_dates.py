"""Dates the way Jekyll reads them: every form, the site's zone, the file name."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from newsletter.config import Settings, SiteSettings
from newsletter.errors import PostError
from newsletter.posts.collection import load_posts
from newsletter.posts.jekyll import parse_date

ISTANBUL = ZoneInfo("Europe/Istanbul")
PLUS3 = timezone(timedelta(hours=3))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # PyYAML leaves an offset without a colon as a string; Jekyll accepts it.
        ("2024-11-04 00:00:00 +0300", datetime(2024, 11, 4, tzinfo=PLUS3)),
        ("2024-11-04 00:00:00 +0000", datetime(2024, 11, 4, tzinfo=UTC)),
        (
            "2024-11-04 00:00:00 -0530",
            datetime(2024, 11, 4, tzinfo=timezone(-timedelta(hours=5, minutes=30))),
        ),
        ("2024-11-04T06:07:08Z", datetime(2024, 11, 4, 6, 7, 8, tzinfo=UTC)),
        ("2024-11-04T06:07:08+03:00", datetime(2024, 11, 4, 6, 7, 8, tzinfo=PLUS3)),
        # Jekyll re-parses the YAML Time's text, which has no fraction of a second.
        ("2024-11-04T06:07:08.250+03:00", datetime(2024, 11, 4, 6, 7, 8, tzinfo=PLUS3)),
        ("2024-11-04 9:05 +0000", datetime(2024, 11, 4, 9, 5, tzinfo=UTC)),  # unpadded, no seconds
        ("2024-11-04 09:05", datetime(2024, 11, 4, 9, 5, tzinfo=ISTANBUL)),  # no zone → site's
        ("2024-11-04", datetime(2024, 11, 4, tzinfo=ISTANBUL)),  # date only
        ("2024-1-4", datetime(2024, 1, 4, tzinfo=ISTANBUL)),
        ("2024-11-04 10:00:00 UTC", datetime(2024, 11, 4, 10, tzinfo=UTC)),
        (date(2024, 11, 4), datetime(2024, 11, 4, tzinfo=ISTANBUL)),
        (datetime(2024, 11, 4, 10), datetime(2024, 11, 4, 10, tzinfo=ISTANBUL)),
    ],
)
def test_every_date_form(value: object, expected: datetime) -> None:
    parsed = parse_date(value, ISTANBUL)
    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()


# Feb 30, 25:00 +0300, +1900 and 20241104 are dates to Jekyll (Ruby rolls
# them over); see test_jekyll_dates.py.  These are not.
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2024-13-01", "impossible date"),
        ("2024-11-32", "impossible date"),
        ("next tuesday", "cannot read"),
        ([2024, 11, 4], "expected a date"),
    ],
)
def test_bad_dates_raise_post_error_with_location(value: object, reason: str) -> None:
    with pytest.raises(PostError) as info:
        parse_date(value, ISTANBUL, path=Path("x.md"), line=4)
    assert reason in info.value.message
    assert (info.value.path, info.value.line, info.value.key) == (Path("x.md"), 4, "date")


def _site(tmp_path: Path, posts: dict[str, str], timezone: str = "Europe/Istanbul") -> Settings:
    folder = tmp_path / "posts"
    folder.mkdir()
    for name, text in posts.items():
        (folder / name).write_text(text, encoding="utf-8")
    return Settings(base_dir=tmp_path, site=SiteSettings(posts_dir=folder, timezone=timezone))


def test_file_name_date_front_matter_wins_and_site_zone(tmp_path: Path) -> None:
    settings = _site(
        tmp_path,
        {
            "2024-03-05-from-name.md": "---\ntitle: A\n---\nBody.\n",
            "2024-03-05-both.md": "---\ntitle: B\ndate: 2024-04-01 08:00\n---\nBody.\n",
            "undated-name.md": "---\ntitle: C\ndate: 2024-05-01T10:00:00Z\n---\nBody.\n",
        },
    )
    posts = {p.slug: p for p in load_posts(settings).posts}
    assert posts["from-name"].date == datetime(2024, 3, 5, tzinfo=ISTANBUL)
    assert posts["both"].date == datetime(2024, 4, 1, 8, tzinfo=ISTANBUL)
    # Shown in the site's zone, as Jekyll does (10:00Z is 13:00 in Istanbul).
    assert posts["undated-name"].date.isoformat() == "2024-05-01T13:00:00+03:00"


def test_no_zone_uses_site_zone_not_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Setting TZ alone changes nothing until time.tzset() makes the process use it.
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        assert time.strftime("%Z", time.localtime(0)) == "PST"
        settings = _site(
            tmp_path, {"2024-03-05-a.md": "---\ndate: 2024-03-05 10:00\n---\nx\n"}, "Asia/Tokyo"
        )
        (post,) = load_posts(settings).posts
    finally:
        monkeypatch.undo()
        time.tzset()
    assert post.date.isoformat() == "2024-03-05T10:00:00+09:00"


def test_url_uses_date_in_site_zone(tmp_path: Path) -> None:
    # 23:30 UTC on the 4th is already the 5th in Istanbul: Jekyll's URL says 05.
    settings = _site(
        tmp_path, {"2024-11-04-late.md": "---\ndate: 2024-11-04 23:30:00 +0000\n---\nx\n"}
    )
    (post,) = load_posts(settings).posts
    assert post.url.endswith("/2024/11/05/late.html")


def test_impossible_date_is_reported_and_skipped_others_go_on(tmp_path: Path) -> None:
    settings = _site(
        tmp_path,
        {
            "2024-02-28-bad.md": "---\ntitle: Bad\nlayout: post\ndate: 2024-02-32\n---\nx\n",
            "2024-13-01-bad-name.md": "---\ntitle: Bad name\n---\nx\n",
            "2024-03-01-good.md": "---\ntitle: Good\n---\nx\n",
            "undated.md": "---\ntitle: No date anywhere\n---\nx\n",
        },
    )
    collection = load_posts(settings)
    assert [p.title for p in collection.posts] == ["Good"]
    lines = sorted(str(p) for p in collection.problems)
    assert lines[0].startswith(
        f"{settings.site.posts_dir / '2024-02-28-bad.md'}:4: date: error: impossible date"
    )
    assert "2024-13-01-bad-name.md: error: impossible date in the file name" in lines[1]
    assert "undated.md: date: error: no date" in lines[2]
    assert len(lines) == 3


def test_a_quoted_date_is_text_read_in_the_site_zone(tmp_path: Path) -> None:
    """Quoted, `2024-11-04 10:00:00` is a string to YAML, so Jekyll's Time.parse
    reads it in the site's zone; unquoted it is a YAML timestamp, UTC.  A
    nested `date:` (not the post's) is never mistaken for it."""
    settings = _site(
        tmp_path,
        {
            "2024-11-04-quoted.md": '---\ndate: "2024-11-04 10:00:00"\n---\nx\n',
            "2024-11-04-single.md": "---\ndate: '2024-11-04T10:00:00'\n---\nx\n",
            "2024-11-04-plain.md": "---\ndate: 2024-11-04 10:00:00\nevent: {date: 'x'}\n---\nx\n",
        },
    )
    dates = {p.slug: p.date.isoformat() for p in load_posts(settings).posts}
    assert dates == {
        "quoted": "2024-11-04T10:00:00+03:00",
        "single": "2024-11-04T10:00:00+03:00",
        "plain": "2024-11-04T13:00:00+03:00",
    }


def test_a_time_past_ruby_range_is_an_error_not_a_rolled_over_date(tmp_path: Path) -> None:
    settings = _site(
        tmp_path,
        {
            "2024-11-04-typo.md": "---\ntitle: Typo\ndate: 2024-11-04 25:00:00\n---\nx\n",
            "2024-11-04-good.md": "---\ntitle: Good\n---\nx\n",
        },
    )
    collection = load_posts(settings)
    assert [p.title for p in collection.posts] == ["Good"]
    (problem,) = collection.problems
    assert str(problem).startswith(
        f"{settings.site.posts_dir / '2024-11-04-typo.md'}:3: date: error: impossible date"
    )
