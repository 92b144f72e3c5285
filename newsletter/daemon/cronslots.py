"""A digest's `cron`, as cron(8) reads it, over APScheduler's calculator.

APScheduler 3's `CronTrigger.from_crontab` differs from crontab in three ways
a digest list's owner would trip over:

* its weekday numbers start at Monday = 0, where crontab's start at
  Sunday = 0 (and 7 is Sunday too): `0 8 * * 1`, Monday in crontab, fired
  on Tuesdays, and `7` was refused;
* with both the day of the month and the weekday restricted (`0 8 1 * 1`),
  it wants both to match, where crontab fires on a day that matches either;
* a slot in a gap that swallows midnight (Santiago and Havana move their
  clocks from 00:00 to 01:00) is skipped for that whole day, where
  elsewhere (02:30 in Berlin's spring gap) it moves past the gap.

So crontab's numeric weekdays are written as names (which mean the same to
both), "either day" is two triggers of which the earlier slot wins, and a
wall-clock slot that falls in a gap fires just after the gap as it does
elsewhere.  Imported only where a cron is read: it loads APScheduler.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

# Crontab's weekday numbers: 0 and 7 are Sunday.
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


class CronSlots(BaseTrigger):
    """The slots of one crontab line in one zone; an APScheduler trigger too
    (the daemon's digest jobs)."""

    def __init__(self, cron: str, zone: ZoneInfo) -> None:
        fields = cron.split()
        if len(fields) != 5:
            raise ValueError(f"5 fields wanted (minute hour day month weekday), got {len(fields)}")
        minute, hour, day, month, weekday = fields
        names = crontab_weekdays(weekday)
        either = not day.startswith("*") and not weekday.startswith("*")
        days = [(day, "*"), ("*", names)] if either else [(day, names)]
        self.zone = zone

        def triggers(tz: ZoneInfo | timezone) -> list[CronTrigger]:
            return [
                CronTrigger(
                    minute=minute, hour=hour, day=d, month=month, day_of_week=w, timezone=tz
                )
                for d, w in days
            ]

        self._aware = triggers(zone)
        # The same line over the zone's wall clock, as if it were UTC: finds
        # a slot whose wall time the zone skips (see `_in_a_gap`).
        self._wall = triggers(UTC)

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        """The first slot at or after `now` (after `previous_fire_time` when
        given, as APScheduler asks), in the zone."""
        start = previous_fire_time + timedelta(microseconds=1) if previous_fire_time else now
        found = [t.get_next_fire_time(None, start) for t in self._aware]
        found += [self._in_a_gap(t, start) for t in self._wall]
        slots = [s for s in found if s is not None]
        return min(slots).astimezone(self.zone) if slots else None

    def _in_a_gap(self, wall: CronTrigger, start: datetime) -> datetime | None:
        """The next wall-clock slot after `start` if the zone skips its time:
        then the moment as far past the gap's start as the slot was (Python's
        reading of a time that does not exist, `fold=0`), so the day keeps
        its slot; None for a slot whose time exists (the aware trigger has it)."""
        local = start.astimezone(self.zone).replace(tzinfo=None)
        slot = wall.get_next_fire_time(None, local.replace(tzinfo=UTC))
        if slot is None:
            return None
        moment = slot.replace(tzinfo=self.zone)
        exists = moment.astimezone(UTC).astimezone(self.zone).replace(tzinfo=None) == slot.replace(
            tzinfo=None
        )
        return None if exists else moment.astimezone(UTC)

    def __str__(self) -> str:
        return " | ".join(str(t) for t in self._aware)


def crontab_weekdays(field: str) -> str:
    """Crontab's weekday field with APScheduler's meaning: numbers (0 or 7
    Sunday, ranges, steps) spelled as day names; names stay as they are."""
    if field == "*":
        return field
    names: list[str] = []
    for part in field.split(","):
        span, slash, step_text = part.partition("/")
        bounds = span.split("-")
        numeric = span == "*" or all(b.isdigit() for b in bounds)
        if not numeric or len(bounds) > 2:
            names.append(part)  # names (or nonsense): APScheduler reads or refuses them
            continue
        step = int(step_text) if slash and step_text.isdigit() else 1
        if slash and (not step_text.isdigit() or step < 1):
            raise ValueError(f"invalid step in weekday {part!r}")
        low, high = (0, 6) if span == "*" else (int(bounds[0]), int(bounds[-1]))
        if slash and len(bounds) == 1 and span != "*":
            high = 6  # "1/2": from Monday on, every second day
        if not 0 <= low <= high <= 7:
            raise ValueError(f"weekday {part!r} is out of range (0-7, 0 and 7 are Sunday)")
        names.extend(_DAY_NAMES[d] for d in range(low, high + 1, step))
    return ",".join(dict.fromkeys(names))
