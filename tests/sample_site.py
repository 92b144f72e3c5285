"""The bundled sample's future-dated post, dated from today in the tests.

`posts/2031-03-09-a-letter-from-the-future.md` shows a post that is listed
but not sent yet.  Tests of the sample assume it lies ahead (never sent,
listed as next), which its fixed date stops being on 2031-03-09, so the
`sample_site` fixture's copy is dated `SAMPLE_FUTURE_DATE` instead: ten years
from today, at the same time of day and offset, with the same slug.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

SAMPLE_FUTURE_POST = "a-letter-from-the-future"
SAMPLE_FUTURE_DATE = datetime.combine(
    date.today() + timedelta(days=3652), time(10), tzinfo=timezone(timedelta(hours=3))
)


def date_the_future_post(posts: Path) -> None:
    """Re-date the copied sample's future post (its front matter and file name)."""
    (found,) = posts.glob(f"*-{SAMPLE_FUTURE_POST}.md")
    text = found.read_text(encoding="utf-8")
    dated = re.sub(
        r"^date: .*$",
        f"date: {SAMPLE_FUTURE_DATE:%Y-%m-%d %H:%M:%S %z}",
        text,
        count=1,
        flags=re.MULTILINE,
    )
    assert dated != text, "the sample's future post has no date line"
    found.unlink()
    (posts / f"{SAMPLE_FUTURE_DATE:%Y-%m-%d}-{SAMPLE_FUTURE_POST}.md").write_text(
        dated, encoding="utf-8"
    )
