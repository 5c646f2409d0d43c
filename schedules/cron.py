"""Cron expressions of five fields (minute, hour, day of month, month, day of week), in UTC, as Vixie cron reads
them: `*`, numbers, ranges `a-b`, steps `*/n`, `a-b/n` and `a/n`, lists `a,b`, month and weekday names (`jan`,
`mon`), 0 or 7 for Sunday, and the nicknames `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly`, `@yearly`
(`@annually`). When both day fields are restricted (neither starts with `*`), a day matching either one matches.
"""
import calendar
from datetime import datetime, timedelta

NICKNAMES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
             "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
MONTH_NAMES = {name.lower(): number for number, name in enumerate(calendar.month_abbr) if name}
DAY_NAMES = {name.lower(): (number + 1) % 7 for number, name in enumerate(calendar.day_abbr)}  # sun = 0
# (name, lowest, highest, names) of each field, in order.
FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}), ("month", 1, 12, MONTH_NAMES),
          ("day of week", 0, 7, DAY_NAMES))
# Past this, an expression is taken never to fire (30 February): leap days come every 4 years, or 8 around 2100.
HORIZON = timedelta(days=366 * 9)


class CronError(ValueError):
    """An expression that is not cron, or that never fires."""


class Cron:
    """One parsed expression. `next_after(moment)` is its first tick strictly after `moment` (aware, UTC)."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        fields = NICKNAMES.get(self.text.lower(), self.text).split()
        if len(fields) != 5:
            raise CronError(f"A cron expression has five fields (minute hour day month weekday), got {text!r}.")
        self.minutes, self.hours, self.days, self.months, weekdays = (
            _parse_field(raw, *spec) for raw, spec in zip(fields, FIELDS))
        self.weekdays = {day % 7 for day in weekdays}
        self.any_day, self.any_weekday = fields[2].startswith("*"), fields[4].startswith("*")

    def _day_matches(self, moment: datetime) -> bool:
        in_month = moment.day in self.days
        in_week = (moment.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def next_after(self, moment: datetime) -> datetime:
        """The first tick after `moment`; raises CronError when there is none within nine years."""
        tick = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        end = moment + HORIZON
        while tick <= end:
            if tick.month not in self.months:
                tick = (tick.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
            elif not self._day_matches(tick):
                tick = tick.replace(hour=0, minute=0) + timedelta(days=1)
            elif tick.hour not in self.hours:
                tick = tick.replace(minute=0) + timedelta(hours=1)
            elif tick.minute not in self.minutes:
                tick += timedelta(minutes=1)
            else:
                return tick
        raise CronError(f"{self.text!r} never fires.")


def _parse_field(raw: str, name: str, lowest: int, highest: int, names: dict[str, int]) -> set[int]:
    values: set[int] = set()
    for item in raw.lower().split(","):
        span, _, step_text = item.partition("/")
        step = _number(step_text, name, names={}) if step_text else 1
        if step < 1:
            raise CronError(f"The step of the {name} field must be at least 1, got {item!r}.")
        if span == "*":
            start, stop = lowest, highest
        elif "-" in span:
            first, _, last = span.partition("-")
            start, stop = _number(first, name, names), _number(last, name, names)
        else:
            start = _number(span, name, names)
            stop = highest if step_text else start  # `a/n` runs from a to the end, by n
        if not lowest <= start <= stop <= highest:
            raise CronError(f"The {name} field takes {lowest}-{highest}, got {item!r}.")
        values.update(range(start, stop + 1, step))
    return values


def _number(text: str, name: str, names: dict[str, int]) -> int:
    if text in names:
        return names[text]
    if not text.isdigit():
        raise CronError(f"{text!r} is not a number of the {name} field.")
    return int(text)
