"""`planning`: what is due, for which list, and when — with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from test_daemon_support import add_members, engine_of, make_site

from newsletter.config import ListSettings
from newsletter.daemon import planning
from newsletter.errors import ConfigError
from newsletter.posts.collection import Post, PostCollection

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday
SINCE = datetime(2026, 1, 1, tzinfo=UTC)
NEWS = ListSettings("news", "News")
PYTHON = ListSettings("python", "Python", tags=("Python",))
WEEKLY = ListSettings(
    "weekly", "Weekly", mode="digest", cron="0 8 * * MON", timezone="Europe/Istanbul"
)
LISTS = {"news": NEWS, "python": PYTHON, "weekly": WEEKLY}


def post(
    post_id: str,
    date: datetime,
    *,
    tags: tuple[str, ...] = (),
    published: bool = True,
    lists: tuple[str, ...] | None = None,
    newsletter: bool = True,
    title: str | None = None,
) -> Post:
    return Post(
        path=Path(f"posts/{post_id}.md"),
        post_id=post_id,
        slug=post_id,
        title=title or post_id.title(),
        title_html=title or post_id.title(),
        date=date,
        url=f"https://notes.example.com/{post_id}",
        description=None,
        image=None,
        image_alt="",
        tags=tags,
        categories=(),
        authors=(),
        excerpt_html="<p>x</p>",
        excerpt_text="x",
        body_html="<p>x</p>",
        published=published,
        lists=lists,
        newsletter=newsletter,
    )


def pairs(plan: planning.Plan) -> set[tuple[str, str]]:
    return {(d.post.post_id, d.list_name) for d in plan.due}


# --------------------------------------------------------------------------- due


def test_a_published_post_in_the_window_is_due_for_every_each_list_it_matches() -> None:
    p = post("hello", NOW - timedelta(hours=1), tags=("python",))
    plan = planning.plan_due([p], LISTS, SINCE, NOW, set())
    # The digest list is never planned here: its cron does that.
    assert pairs(plan) == {("hello", "news"), ("hello", "python")}
    assert plan.future == () and plan.before_since == ()


def test_a_post_dated_exactly_now_is_due_and_one_a_second_later_is_not() -> None:
    on_time = post("on-time", NOW)
    early = post("early", NOW + timedelta(seconds=1))
    plan = planning.plan_due([on_time, early], {"news": NEWS}, SINCE, NOW, set())
    assert pairs(plan) == {("on-time", "news")}
    assert [p.post_id for p in plan.future] == ["early"]


def test_posts_before_since_are_held_back_and_counted() -> None:
    old = [post(f"old-{i}", SINCE - timedelta(days=i + 1)) for i in range(3)]
    new = post("new", SINCE + timedelta(days=1))
    plan = planning.plan_due([*old, new], {"news": NEWS}, SINCE, NOW, set())
    assert pairs(plan) == {("new", "news")}
    assert {p.post_id for p in plan.before_since} == {"old-0", "old-1", "old-2"}


def test_a_post_dated_exactly_at_since_is_due() -> None:
    plan = planning.plan_due([post("edge", SINCE)], {"news": NEWS}, SINCE, NOW, set())
    assert pairs(plan) == {("edge", "news")}


def test_unpublished_and_opted_out_posts_are_never_due_nor_scheduled() -> None:
    posts = [
        post("draft", NOW - timedelta(hours=1), published=False),
        post("quiet", NOW - timedelta(hours=1), newsletter=False),
        post("later-draft", NOW + timedelta(hours=1), published=False),
    ]
    plan = planning.plan_due(posts, {"news": NEWS}, SINCE, NOW, set())
    assert plan.due == () and plan.future == () and plan.before_since == ()


def test_a_mailed_pair_is_never_due_again_even_retitled_and_redated() -> None:
    # Identity is the post id: a new title or date does not make a new post.
    edited = post("hello", NOW - timedelta(minutes=5), title="A New Title", tags=("python",))
    plan = planning.plan_due([edited], LISTS, SINCE, NOW, {("hello", "news")})
    assert pairs(plan) == {("hello", "python")}
    redated = post("hello", NOW + timedelta(days=3))
    plan = planning.plan_due([redated], {"news": NEWS}, SINCE, NOW, {("hello", "news")})
    assert plan.future == () and plan.due == ()


def test_tags_filter_is_case_insensitive_and_empty_tags_take_everything() -> None:
    py = post("py", NOW - timedelta(hours=1), tags=("PYTHON", "tools"))
    other = post("other", NOW - timedelta(hours=1), tags=("Sleep",))
    untagged = post("untagged", NOW - timedelta(hours=1))
    plan = planning.plan_due([py, other, untagged], LISTS, SINCE, NOW, set())
    assert pairs(plan) == {
        ("py", "news"),
        ("py", "python"),
        ("other", "news"),
        ("untagged", "news"),
    }


def test_front_matter_lists_choose_exactly_those_lists() -> None:
    # Named lists win over the tag filter: the writer chose on purpose.
    p = post("chosen", NOW - timedelta(hours=1), lists=("python",))
    plan = planning.plan_due([p], LISTS, SINCE, NOW, set())
    assert pairs(plan) == {("chosen", "python")}
    assert planning.list_takes(p, WEEKLY) is False


def test_an_unknown_list_in_front_matter_is_a_warning_naming_the_file() -> None:
    p = post("typo", NOW - timedelta(hours=1), lists=("pyhton", "news"))
    plan = planning.plan_due([p], LISTS, SINCE, NOW, set())
    assert pairs(plan) == {("typo", "news")}
    [problem] = plan.problems
    assert str(problem) == "posts/typo.md: lists: warning: names unknown list 'pyhton'"


def test_a_future_post_already_mailed_everywhere_gets_no_job() -> None:
    p = post("soon", NOW + timedelta(minutes=1))
    assert planning.plan_due([p], {"news": NEWS}, SINCE, NOW, {("soon", "news")}).future == ()
    assert planning.plan_due([p], {"news": NEWS}, SINCE, NOW, set()).future == (p,)


# --------------------------------------------------------------------------- digests


def test_digest_posts_lists_matching_posts_oldest_first_without_excluded() -> None:
    posts = [
        post("c", NOW - timedelta(days=1)),
        post("a", NOW - timedelta(days=3)),
        post("b", NOW - timedelta(days=2)),
        post("done", NOW - timedelta(days=2)),
        post("old", SINCE - timedelta(days=1)),
        post("tomorrow", NOW + timedelta(days=1)),
        post("hidden", NOW - timedelta(days=1), newsletter=False),
    ]
    chosen = planning.digest_posts(posts, WEEKLY, SINCE, NOW, {"done"})
    assert [p.post_id for p in chosen] == ["a", "b", "c"]


def test_digest_respects_the_lists_tags() -> None:
    tagged = ListSettings("py-weekly", "Py", mode="digest", cron="0 8 * * MON", tags=("python",))
    posts = [
        post("py", NOW - timedelta(days=1), tags=("Python",)),
        post("no", NOW - timedelta(days=1)),
    ]
    assert [p.post_id for p in planning.digest_posts(posts, tagged, SINCE, NOW, set())] == ["py"]


def test_digest_slot_is_the_latest_cron_time_in_the_window_in_the_lists_zone() -> None:
    zone = ZoneInfo("Europe/Istanbul")  # UTC+3: 08:00 there is 05:00 UTC
    monday_8 = datetime(2026, 3, 2, 5, 0, tzinfo=UTC)
    anchor = datetime(2026, 2, 28, tzinfo=UTC)
    assert planning.digest_slot(WEEKLY, zone, anchor, monday_8 - timedelta(seconds=1)) is None
    assert planning.digest_slot(WEEKLY, zone, anchor, monday_8) == monday_8
    # Down for three weeks: one digest for the latest slot, not three.
    later = monday_8 + timedelta(weeks=3, hours=1)
    assert planning.digest_slot(WEEKLY, zone, anchor, later) == monday_8 + timedelta(weeks=3)
    # The slot just sent is the new anchor: nothing more until next week.
    assert planning.digest_slot(WEEKLY, zone, monday_8, monday_8 + timedelta(days=6)) is None


def test_digest_post_id_is_stable_per_slot() -> None:
    slot = datetime(2026, 3, 2, 8, 0, tzinfo=ZoneInfo("Europe/Istanbul"))
    assert planning.digest_post_id("weekly", slot) == "digest:weekly:2026-03-02T05:00:00+00:00"
    plan = planning.DigestPlan("weekly", slot, (post("a", NOW),))
    assert plan.mailing_post_id == planning.digest_post_id("weekly", slot)
    assert plan.post_ids == ("a",)


def slots(cron: str, after: datetime, count: int, zone: str = "UTC") -> list[datetime]:
    """The next `count` slots of `cron` after `after`, as wall times in `zone`."""
    mailing_list = ListSettings("d", "D", mode="digest", cron=cron)
    tz = ZoneInfo(zone)
    found: list[datetime] = []
    for _ in range(count):
        nxt = planning.next_digest_time(mailing_list, tz, after)
        assert nxt is not None
        found.append(nxt.astimezone(tz).replace(tzinfo=None))
        after = nxt
    return found


SATURDAY = datetime(2025, 1, 4, 12, 0, tzinfo=UTC)  # Monday is the 6th


@pytest.mark.parametrize(
    ("weekday", "days"),
    [
        ("1", [6, 13]),  # cron(8): 1 is Monday (APScheduler alone read it as Tuesday)
        ("0", [5, 12]),  # 0 is Sunday
        ("7", [5, 12]),  # and so is 7
        ("MON", [6, 13]),
        ("1-5", [6, 7, 8, 9, 10, 13]),  # weekdays: Monday to Friday
        ("0,6", [5, 11, 12, 18]),  # the weekend
        ("*/2", [5, 7, 9, 11, 12]),  # Sunday, Tuesday, Thursday, Saturday
        ("5-7", [5, 10, 11, 12]),  # Friday to Sunday
    ],
)
def test_cron_weekdays_mean_what_they_mean_in_crontab(weekday: str, days: list[int]) -> None:
    found = slots(f"0 8 * * {weekday}", SATURDAY, len(days))
    assert [d.day for d in found] == days
    assert all(d.hour == 8 for d in found)


def test_a_cron_with_both_day_fields_fires_when_either_matches() -> None:
    """cron(8): with both the day of the month and the weekday restricted,
    a day that matches either is a slot (APScheduler alone needs both)."""
    found = slots("0 8 1 * 1", datetime(2025, 1, 1, 12, tzinfo=UTC), 4)
    assert [(d.month, d.day) for d in found] == [(1, 6), (1, 13), (1, 20), (1, 27)]
    found = slots("0 8 1 * 1", datetime(2025, 1, 27, 12, tzinfo=UTC), 2)
    assert [(d.month, d.day) for d in found] == [(2, 1), (2, 3)]


@pytest.mark.parametrize(
    ("zone", "cron", "night", "slot"),
    [
        # Santiago moves its clocks from 00:00 to 01:00 on 7 September 2025:
        # 00:30 does not exist that day; the slot moves past the gap, the
        # day's digest is not skipped to the 8th.
        ("America/Santiago", "30 0 * * *", datetime(2025, 9, 6, 13, tzinfo=UTC),
         datetime(2025, 9, 7, 1, 30)),
        ("America/Havana", "0 0 * * *", datetime(2025, 3, 8, 12, tzinfo=UTC),
         datetime(2025, 3, 9, 1, 0)),
        # A weekly Sunday slot in the gap: not a week late.
        ("America/Santiago", "30 0 * * SUN", datetime(2025, 9, 6, 13, tzinfo=UTC),
         datetime(2025, 9, 7, 1, 30)),
    ],
)  # fmt: skip
def test_a_slot_in_a_midnight_gap_fires_after_it_the_same_day(
    zone: str, cron: str, night: datetime, slot: datetime
) -> None:
    assert slots(cron, night, 1, zone) == [slot]


def test_a_bad_cron_is_a_config_error_naming_the_key() -> None:
    bad = ListSettings("weekly", "W", mode="digest", cron="every monday")
    with pytest.raises(ConfigError) as info:
        planning.digest_slot(bad, ZoneInfo("UTC"), SINCE, NOW)
    assert info.value.key == "lists.weekly.cron"


# --------------------------------------------------------------------------- store-backed


@pytest.mark.usefixtures("database_env")
def test_since_defaults_to_the_first_run_and_is_remembered(tmp_path: Path) -> None:
    site = make_site(tmp_path, since=None)
    settings = site.settings()
    engine = engine_of(settings)
    first = planning.effective_since(engine, settings, NOW)
    assert first == NOW
    assert planning.effective_since(engine, settings, NOW + timedelta(days=9)) == NOW
    explicit = make_site(tmp_path / "b", since="2025-06-01").settings()
    assert planning.effective_since(engine, explicit, NOW) == datetime(2025, 6, 1, tzinfo=UTC)


@pytest.mark.usefixtures("database_env")
def test_a_damaged_state_value_reads_as_missing(tmp_path: Path) -> None:
    from newsletter.store.schema import state

    engine = engine_of(make_site(tmp_path).settings())
    with engine.begin() as conn:
        conn.execute(state.insert().values(key="k", value="not a time", updated_at=NOW))
    assert planning.read_state_time(engine, "k") is None
    assert planning.write_state_time(engine, "k", NOW) == NOW
    assert planning.read_state_time(engine, "k") == NOW


@pytest.mark.usefixtures("database_env")
def test_upcoming_sends_lists_due_future_and_digest_sends(tmp_path: Path) -> None:
    from newsletter.delivery.mailings import plan_mailing

    lists = (
        '[lists.news]\ntitle = "News"\n'
        '[lists.weekly]\ntitle = "Weekly"\nmode = "digest"\ncron = "0 8 * * MON"\n'
    )
    site = make_site(tmp_path, lists=lists)
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "news", settings=settings)
    posts = PostCollection(
        (
            post("sent", NOW - timedelta(days=2)),
            post("waiting", NOW - timedelta(minutes=1)),
            post("tomorrow", NOW + timedelta(days=1)),
            post("draft", NOW + timedelta(days=1), published=False),
        ),
        (),
    )
    plan_mailing(engine, settings, "sent", "news")
    upcoming = planning.upcoming_sends(settings, posts, engine, NOW)
    rows = [(u.post_id, u.list_name, u.at, u.kind) for u in upcoming]
    next_monday = datetime(2026, 3, 9, 8, 0, tzinfo=UTC)
    assert rows == [
        ("waiting", "news", NOW, "post"),
        ("tomorrow", "news", NOW + timedelta(days=1), "post"),
        (planning.digest_post_id("weekly", next_monday), "weekly", next_monday, "digest"),
    ]
    # The digest lists what it would carry so far (its window ends at the slot).
    assert upcoming[-1].post_ids == ("sent", "waiting", "tomorrow")
    assert upcoming[-1].title == "Weekly: 3 posts"
