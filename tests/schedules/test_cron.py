"""The cron parser: five fields in UTC, as Vixie cron reads them."""
from datetime import datetime, timezone

import pytest

from schedules.cron import Cron, CronError


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def ticks(expression: str, start: str, count: int) -> list[str]:
    cron, moment, found = Cron(expression), at(start), []
    for _ in range(count):
        moment = cron.next_after(moment)
        found.append(moment.strftime("%Y-%m-%d %H:%M"))
    return found


def test_every_minute_ticks_on_the_next_whole_minute():
    assert ticks("* * * * *", "2026-12-06 10:00:30", 2) == ["2026-12-06 10:01", "2026-12-06 10:02"]


def test_steps_ranges_and_lists():
    assert ticks("*/15 9-10 * * *", "2026-12-06 09:50", 4) == [
        "2026-12-06 10:00", "2026-12-06 10:15", "2026-12-06 10:30", "2026-12-06 10:45"]
    assert ticks("5,10 0 * * *", "2026-12-06 00:06", 2) == ["2026-12-06 00:10", "2026-12-07 00:05"]
    assert ticks("10/20 * * * *", "2026-12-06 00:00", 3) == ["2026-12-06 00:10", "2026-12-06 00:30",
                                                            "2026-12-06 00:50"]


def test_names_and_sunday_as_seven():
    # 2026-12-06 is a Sunday.
    assert ticks("0 12 * dec sun", "2026-12-01 00:00", 2) == ["2026-12-06 12:00", "2026-12-13 12:00"]
    assert ticks("0 12 * * 7", "2026-12-01 00:00", 1) == ["2026-12-06 12:00"]
    assert ticks("0 0 * * mon-fri", "2026-12-04 01:00", 2) == ["2026-12-07 00:00", "2026-12-08 00:00"]


def test_both_day_fields_restricted_match_either():
    # The 1st of the month, or any Monday.
    assert ticks("0 0 1 * mon", "2026-12-27 00:00", 3) == ["2026-12-28 00:00", "2027-01-01 00:00",
                                                          "2027-01-04 00:00"]


def test_nicknames_and_leap_days():
    assert ticks("@monthly", "2026-12-06 00:00", 1) == ["2027-01-01 00:00"]
    assert ticks("0 0 29 2 *", "2026-12-06 00:00", 1) == ["2028-02-29 00:00"]


@pytest.mark.parametrize("expression", ["* * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *",
                                        "*/0 * * * *", "x * * * *", "5-1 * * * *", "* * * foo *", "0 0 30 2 *"])
def test_it_refuses_what_is_not_cron_or_never_fires(expression):
    with pytest.raises(CronError):
        Cron(expression).next_after(at("2026-12-06 00:00"))
