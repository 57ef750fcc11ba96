"""EventBridge Scheduler expressions, checked locally: cron(...) and rate(...), and the longest
gap between two runs (the missed-night alarm waits a little longer than that).

cron fields, as EventBridge Scheduler documents them: minutes hours day-of-month month
day-of-week year; exactly one of day-of-month and day-of-week is `?`; day-of-week 1-7 is
SUN-SAT; L, W and # in the day fields.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MONTHS = {name: n for n, name in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}
DAYS = {name: n for n, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), 1)}
# field: (name, lowest, highest, names, extra characters allowed besides , - * /)
FIELDS = (
    ("minutes", 0, 59, {}, ""),
    ("hours", 0, 23, {}, ""),
    ("day-of-month", 1, 31, {}, "?LW"),
    ("month", 1, 12, MONTHS, ""),
    ("day-of-week", 1, 7, DAYS, "?L#"),
    ("year", 1970, 2199, {}, ""),
)
RATE_UNITS = {"minute": 60, "hour": 3600, "day": 86400}
LOOKAHEAD_DAYS = 2 * 366  # the longest gap is looked for over two years of fire times


class ScheduleError(Exception):
    """An expression or time zone EventBridge Scheduler would refuse: a SettingsError to the
    settings that hold it (this module knows nothing of them)."""


def time_zone(key: str) -> ZoneInfo:
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"timezone {key!r} is not an IANA time zone (e.g. Europe/Berlin, "
                            "America/New_York, UTC)") from None


def check(expression: str, timezone: str) -> dt.timedelta:
    """Raise ScheduleError for an expression Scheduler would refuse (or that never fires);
    return the longest time between two consecutive runs."""
    zone = time_zone(timezone)
    text = expression.strip()
    rate = re.fullmatch(r"rate\((.*)\)", text)
    if rate:
        return _rate(expression, rate.group(1))
    cron = re.fullmatch(r"cron\((.*)\)", text)
    if not cron:
        raise ScheduleError(f"schedule {expression!r}: use cron(minutes hours day-of-month month "
                            "day-of-week year), e.g. cron(0 3 * * ? *), or rate(1 day)")
    fields = cron.group(1).split()
    if len(fields) != 6:
        raise ScheduleError(f"schedule {expression!r}: cron takes six fields (minutes hours "
                            f"day-of-month month day-of-week year), not {len(fields)}: "
                            "e.g. cron(0 3 * * ? *)")
    if (fields[2] == "?") == (fields[4] == "?"):
        raise ScheduleError(f"schedule {expression!r}: exactly one of day-of-month and "
                            "day-of-week must be '?' (e.g. cron(0 3 * * ? *) or "
                            "cron(0 3 ? * MON-FRI *))")
    parsed = [_field(expression, value, *spec) for value, spec in zip(fields, FIELDS, strict=True)]
    return _longest_gap(expression, parsed, zone)


def _rate(expression: str, body: str) -> dt.timedelta:
    match = re.fullmatch(r"\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*", body)
    if not match or int(match.group(1)) < 1:
        raise ScheduleError(f"schedule {expression!r}: rate takes a positive whole number and "
                            "a unit (minutes, hours, days), e.g. rate(1 day)")
    value, unit = int(match.group(1)), match.group(2)
    if (value == 1) != (not unit.endswith("s")):
        right = unit.rstrip("s") + ("" if value == 1 else "s")
        raise ScheduleError(f"schedule {expression!r}: write rate({value} {right})")
    return dt.timedelta(seconds=value * RATE_UNITS[unit.rstrip("s")])


def _field(expression: str, value: str, name: str, low: int, high: int, names: dict,
           extra: str):
    """A field as a set of numbers, or for the day fields the special forms (L, W, #)."""

    def bad(why: str) -> ScheduleError:
        return ScheduleError(f"schedule {expression!r}: {name} field {value!r}: {why}")

    def number(text: str) -> int:
        text = text.upper()
        if text in names:
            return names[text]
        if not text.isdigit():
            raise bad(f"{text!r} is not a number from {low} to {high}")
        if not low <= int(text) <= high:
            raise bad(f"{text} is outside {low}-{high}")
        return int(text)

    if value == "?":
        if "?" not in extra:
            raise bad("'?' is only for day-of-month or day-of-week")
        return None
    upper = value.upper()
    if name == "day-of-month" and (upper == "L" or re.fullmatch(r"\d+W|LW", upper)):
        if upper not in ("L", "LW"):
            number(upper[:-1])
        return ("special", upper)
    if name == "day-of-week" and re.fullmatch(r"\w+#\d|\w+L", upper):
        day, _, nth = upper.partition("#")
        number(day.rstrip("L") if not nth else day)
        if nth and not 1 <= int(nth) <= 5:
            raise bad("#n takes n from 1 to 5")
        return ("special", upper)
    values: set[int] = set()
    for part in value.split(","):
        span, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            raise bad(f"step {step!r} is not a positive number")
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first, last = (number(x) for x in span.split("-", 1))
        else:
            first = number(span)
            last = high if step else first
        if first > last:
            raise bad(f"range {span!r} runs backwards")
        values.update(range(first, last + 1, int(step) if step else 1))
    return values


def _day_matches(spec, day: dt.date, dom: bool) -> bool:
    if spec is None:
        return True
    if isinstance(spec, set):
        return (day.day if dom else day.isoweekday() % 7 + 1) in spec
    text = spec[1]
    last = calendar.monthrange(day.year, day.month)[1]
    if dom:
        if text == "L":
            return day.day == last
        target = last if text == "LW" else min(int(text[:-1]), last)
        wanted = dt.date(day.year, day.month, target)
        if wanted.weekday() == 5:  # Saturday: the Friday before, unless that is last month
            wanted = wanted - dt.timedelta(days=1) if target > 1 else wanted + dt.timedelta(days=2)
        elif wanted.weekday() == 6:  # Sunday: the Monday after, unless that is next month
            wanted = wanted + dt.timedelta(days=1) if target < last else wanted - dt.timedelta(days=2)
        return day == wanted
    weekday = day.isoweekday() % 7 + 1
    name, _, nth = text.partition("#")
    if nth:
        wanted = DAYS.get(name) or int(name)
        return weekday == wanted and (day.day - 1) // 7 + 1 == int(nth)
    wanted = DAYS.get(name[:-1]) or int(name[:-1])
    return weekday == wanted and day.day + 7 > last


def _longest_gap(expression: str, fields: list, zone: ZoneInfo) -> dt.timedelta:
    minutes, hours, dom, months, dow, years = fields
    times = [(h, m) for h in sorted(hours) for m in sorted(minutes)]
    # within a day: the widest gap between two times (plus an hour, for a DST change)
    within = max((dt.timedelta(hours=h2 - h1, minutes=m2 - m1) + dt.timedelta(hours=1)
                  for (h1, m1), (h2, m2) in zip(times, times[1:], strict=False)), default=dt.timedelta(0))
    today = dt.datetime.now(dt.UTC).date()
    fire_days = [day for day in (today + dt.timedelta(days=n) for n in range(LOOKAHEAD_DAYS))
                 if day.month in months and day.year in years
                 and _day_matches(dom, day, True) and _day_matches(dow, day, False)]
    _refuse_missing_times(expression, fire_days, times, zone)
    days = [tuple(dt.datetime(day.year, day.month, day.day, h, m, tzinfo=zone)
                  .astimezone(dt.UTC) for h, m in (times[0], times[-1])) for day in fire_days]
    if len(days) < 2:
        raise ScheduleError(f"schedule {expression!r} fires on {len(days) or 'no'} day"
                            f"{'' if len(days) == 1 else 's'} in the next two years: a nightly "
                            "copy needs a repeating schedule")
    between = max(first - last for (_, last), (first, _) in zip(days, days[1:], strict=False))
    return max(between, within)


# --------------------------------------------------------------------------- DST gaps


def exists(day: dt.date, hour: int, minute: int, zone: ZoneInfo) -> bool:
    """Whether the local time is on the clock that day (not skipped by a spring-forward)."""
    local = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
    back = local.astimezone(dt.UTC).astimezone(zone)
    return (back.date(), back.hour, back.minute) == (day, hour, minute)


def changes_clocks(day: dt.date, zone: ZoneInfo) -> bool:
    start = dt.datetime(day.year, day.month, day.day, tzinfo=zone)
    return start.utcoffset() != (start + dt.timedelta(days=1)).utcoffset()


def _refuse_missing_times(expression: str, days: list[dt.date], times: list[tuple[int, int]],
                          zone: ZoneInfo) -> None:
    """A time of the schedule that a spring-forward skips on one of its days: EventBridge
    Scheduler skips that run ("your schedule invocation gets skipped if the cron expression
    falls on a non-existent date and time", AWS re:Post knowledge center,
    eventbridge-scheduler-adjust-dst), so that night would have no copy and no summary."""
    for day in days:
        if not changes_clocks(day, zone):
            continue
        for hour, minute in times:
            if exists(day, hour, minute, zone):
                continue
            first, after = _skipped_span(day, hour, minute, zone)
            safe = _nearest_safe_time((hour, minute), first, after, days, zone)
            hint = f"use {safe[0]:02d}:{safe[1]:02d} instead, the nearest time every night has" \
                if safe else f"pick a time outside {_hhmm(first)}-{_hhmm(after)}"
            raise ScheduleError(
                f"schedule {expression!r} in {zone.key}: {hour:02d}:{minute:02d} does not exist "
                f"on {day.isoformat()} (the clocks jump from {_hhmm(first)} to {_hhmm(after)}) "
                f"and EventBridge Scheduler skips that night's run: {hint}")


def _skipped_span(day: dt.date, hour: int, minute: int, zone: ZoneInfo) -> tuple[int, int]:
    """The skipped span around a missing time, as minutes of the day: its first minute and the
    first one after it that exists."""
    first = after = hour * 60 + minute
    while first > 0 and not exists(day, *divmod(first - 1, 60), zone):
        first -= 1
    while after < 24 * 60 - 1 and not exists(day, *divmod(after, 60), zone):
        after += 1
    return first, after


def _nearest_safe_time(wanted: tuple[int, int], first: int, after: int, days: list[dt.date],
                       zone: ZoneInfo) -> tuple[int, int] | None:
    """The time nearest to `wanted` just outside the skipped span that exists on every day the
    schedule fires (after the span first, on a tie)."""
    at = wanted[0] * 60 + wanted[1]
    for candidate in sorted((after, first - 1), key=lambda c: (abs(c - at), c < at)):
        if 0 <= candidate < 24 * 60 and all(
                exists(day, *divmod(candidate, 60), zone) for day in days
                if changes_clocks(day, zone)):
            return divmod(candidate, 60)
    return None


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


# --------------------------------------------------------------------------- rate start


def parse_start_time(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", text.strip())
    if not match:
        raise ScheduleError(f"rate_start_time {text!r}: write a local time as HH:MM, e.g. 03:00")
    return int(match.group(1)), int(match.group(2))


def next_start(start_time: str, timezone: str, after: dt.datetime) -> dt.datetime:
    """The next moment after `after` at which the local clock in `timezone` shows
    start_time, in UTC: the first run of a rate(...) schedule. Without a StartDate EventBridge
    Scheduler invokes a rate schedule at once ("If you do not provide a StartDate for a
    rate-based schedule, your schedule starts invoking your target immediately", EventBridge
    Scheduler User Guide, "Schedule types", Rate-based schedules), which would start a copy
    while setup runs, in the working day."""
    zone = time_zone(timezone)
    hour, minute = parse_start_time(start_time)
    day = after.astimezone(zone).date()
    while True:
        if exists(day, hour, minute, zone):
            moment = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
            if moment > after:
                return moment.astimezone(dt.UTC)
        day += dt.timedelta(days=1)
