"""Budgets from files and the clock: an Electricity Maps CSV export, a fixed number, a weekday x
time-of-day table across a daylight-saving change."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from controller.budget.api_http import MalformedAnswer, parse_time_s
from controller.budget.base import TransientBudgetError
from controller.budget.carbon import CarbonBudgetSource, IntensityPoint, PowerCurve
from controller.budget.carbon_feeds import CsvIntensityFeed, parse_intensity_csv
from controller.budget.schedule import FixedSource, Rule, ScheduleSource, minutes

OLD_HEADER = ("Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct),"
              "Carbon Intensity gCO₂eq/kWh (LCA),Low Carbon Percentage,Renewable Percentage,Data Source,"
              "Data Estimated,Data Estimation Method")
NEW_HEADER = ("Datetime (UTC),Country,Zone name,Zone id,Carbon intensity gCO₂eq/kWh (direct),"
              "Carbon intensity gCO₂eq/kWh (Life cycle),Carbon-free energy percentage (CFE%),"
              "Renewable energy percentage (RE%),Data source,Data estimated,Data estimation method")
ROWS = ["2026-12-01 00:00:00,Germany,Germany,DE,250.1,300.5,55.2,50.1,synthetic,false,",
        "2026-12-01 01:00:00,Germany,Germany,DE,,,,,synthetic,true,",
        "",
        "2026-12-01T02:00:00.000Z,Germany,Germany,DE,410.0,460.0,30.0,25.0,synthetic,true,TIME_SLICER_AVERAGE"]
T0 = parse_time_s("2026-12-01T00:00:00Z", "test")


def test_an_export_is_read_by_column_meaning_whatever_the_header_spelling() -> None:
    text = "\n".join([NEW_HEADER, *ROWS])
    local_first = "\n".join(["Datetime (Local)," + NEW_HEADER, *(f"2026-12-01 09:00:00,{r}" for r in ROWS if r)])
    assert parse_intensity_csv(local_first, "life_cycle") == parse_intensity_csv(text, "life_cycle")  # the UTC one
    kg_first = "\n".join(["Carbon intensity kgCO₂eq/kWh (Life cycle)," + NEW_HEADER, *(f"0.3,{r}" for r in ROWS if r)])
    assert parse_intensity_csv(kg_first, "life_cycle") == parse_intensity_csv(text, "life_cycle")  # the grams one
    for grams in ("(gCO₂eq/kWh) (Life cycle)", "gCO₂eq / kWh (Life cycle)", "[gCO2eq/kWh] (Life cycle)"):
        spelt = "\n".join([NEW_HEADER.replace("gCO₂eq/kWh (Life cycle)", grams), *ROWS])
        assert parse_intensity_csv(spelt, "life_cycle") == parse_intensity_csv(text, "life_cycle")
    assert parse_intensity_csv(text, "life_cycle") == [IntensityPoint(T0, 300.5), IntensityPoint(T0 + 7200, 460.0)]
    assert [p.g_per_kwh for p in parse_intensity_csv(text, "direct")] == [250.1, 410.0]
    for life_cycle in ("(LCA)", "(Lifecycle)"):
        old = parse_intensity_csv("\n".join([OLD_HEADER.replace("(LCA)", life_cycle), *ROWS]), "life_cycle")
        assert [p.g_per_kwh for p in old] == [300.5, 460.0]


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty file"),
    ("Datetime (UTC),Zone Id\n2026-12-01 00:00:00,DE", "no carbon intensity"),
    (NEW_HEADER + "\n" + ROWS[0] + "\n2026-12-01 01:00:00,Germany,Germany,DE,1,abc",
     "line 3: intensity 'abc' is no number"),
    (NEW_HEADER + "\nyesterday,Germany,Germany,DE,1,2", "line 2: time 'yesterday' is no ISO 8601 time"),
    # a row cut short: the message had been Python's "list index out of range"
    (NEW_HEADER + "\n" + ROWS[0] + "\n2026-12-01 01:00:00,Germany",
     "line 3: 2 fields, where the header puts its time in field 1 and its intensity in field 6"),
    *((NEW_HEADER + f"\n2026-12-01 00:00:00,Germany,Germany,DE,1,{v}", r"line 2: intensity must be in \[0, 5000\]")
      for v in ("nan", "-inf", "-3", "1e999", "9000")),
    (NEW_HEADER + "\n" + ROWS[0] + "\n" + ROWS[0], "line 3: its time repeats line 2's"),
    # the UTC year 0 and 10000: the message that named them raised out of check-config and the daemon's start
    *((NEW_HEADER + f"\n{t},Germany,Germany,DE,1,2", re.escape(f"line 2: time '{t}' is outside 1970-9998 UTC"))
      for t in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-12:00", "1969-12-31 23:59:59")),
    ("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1", "its first line holds no comma: not a CSV export"),
    # a trial: read as UTC and as grams, local times shifted every point, and kilograms ran the budget at the
    # curve's cleanest end all day
    *((NEW_HEADER.replace("(UTC)", zone) + "\n" + ROWS[0], rf"column 'Datetime {re.escape(zone)}' is not in UTC")
      for zone in ("(Local)", "(UTC+01:00)")),
    *((NEW_HEADER.replace("gCO₂eq/kWh (Life cycle)", unit) + "\n" + ROWS[0],
       r"column 'Carbon intensity .* \(Life cycle\)' is not in grams a kWh")
      for unit in ("kgCO₂eq/kWh (Life cycle)", "lbsCO2/MWh (Life cycle)", "gCO2eq/MWh (Life cycle)")),
])
def test_a_broken_export_names_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(MalformedAnswer, match=message):
        parse_intensity_csv(text, "life_cycle", "day.csv")


def test_a_csv_feed_drives_the_carbon_source_and_rereads_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "day.csv"
    path.write_text("\ufeff" + "\n".join([NEW_HEADER, *ROWS]), encoding="utf-8")
    source = CarbonBudgetSource(CsvIntensityFeed(str(path)), PowerCurve([(300.0, 2000.0), (460.0, 1200.0)]),
                                lead_s=3600.0, refresh_s=60.0)
    assert source.step(T0 + 1800).budget_w == 1997.5  # 300.5 g
    assert source.step(T0 + 3600 + 60).budget_w == 1200.0  # 02:00's 460 g within the hour ahead
    path.write_text("\n".join([NEW_HEADER, ROWS[0].replace("300.5", "460.0")]), encoding="utf-8")
    os.utime(path, ns=(0, 10**9))
    reread = source.step(T0 + 3600 + 120)  # the file's one point now: 460 g, no later point to end it
    assert reread.budget_w == 1200.0 and reread.valid_until_s == T0 + source.stale_after_s


def test_a_missing_or_broken_csv_is_transient_after_retry_s(tmp_path: Path) -> None:
    path = tmp_path / "day.csv"
    with pytest.raises(TransientBudgetError) as missing:
        CsvIntensityFeed(str(path), retry_s=30.0).fetch(T0)
    path.write_text(NEW_HEADER + "\nyesterday,Germany,Germany,DE,1,2")
    with pytest.raises(MalformedAnswer, match="line 2") as broken:
        CsvIntensityFeed(str(path), retry_s=30.0).fetch(T0)
    assert missing.value.retry_after_s == broken.value.retry_after_s == 30.0


def test_fixed_holds_forever() -> None:
    reading = FixedSource(2500.0).step(T0)
    assert reading.budget_w == 2500.0 and reading.valid_until_s == float("inf")


def test_times_of_day_parse() -> None:
    assert minutes("00:00") == 0 and minutes("08:30") == 510 and minutes("24:00") == 1440
    for bad in ("8:30", "24:01", "12:60", "ab:cd"):
        with pytest.raises(ValueError):
            minutes(bad)


WORKDAYS = frozenset(range(5))
BERLIN = ScheduleSource([Rule(WORKDAYS, minutes("08:00"), minutes("20:00"), 1000.0, "work"),
                         Rule(frozenset({0}), minutes("12:00"), minutes("13:00"), 800.0, "monday-noon")],
                        default_budget_w=2000.0, time_zone="Europe/Berlin")


def utc(text: str) -> float:
    return parse_time_s(text + "+00:00", "test")


def test_schedule_follows_local_time_across_the_spring_dst_change() -> None:
    # Berlin moves from UTC+1 to UTC+2 in the night of Sunday 29 March 2026.
    assert BERLIN.step(utc("2026-03-27T06:59:00")).budget_w == 2000.0  # Friday 07:59 CET
    assert BERLIN.step(utc("2026-03-27T07:00:00")).budget_w == 1000.0  # Friday 08:00 CET
    assert BERLIN.step(utc("2026-03-30T05:59:00")).budget_w == 2000.0  # Monday 07:59 CEST
    assert BERLIN.step(utc("2026-03-30T06:00:00")).budget_w == 1000.0  # Monday 08:00 CEST
    saturday = BERLIN.step(utc("2026-03-28T22:00:00"))
    assert saturday.budget_w == 2000.0 and saturday.why == "schedule default 2000 W"
    assert saturday.valid_until_s == utc("2026-03-30T06:00:00")  # 32 h later, an hour shorter than the clock says


def test_schedule_holds_until_its_next_change_and_the_lowest_rule_wins() -> None:
    monday = BERLIN.step(utc("2026-03-30T09:30:00"))  # 11:30 CEST
    assert monday.budget_w == 1000.0 and monday.why == "schedule work 1000 W"
    assert monday.valid_until_s == utc("2026-03-30T10:00:00")  # monday-noon's 800 W
    noon = BERLIN.step(utc("2026-03-30T10:30:00"))
    assert noon.why == "schedule monday-noon 800 W" and noon.valid_until_s == utc("2026-03-30T11:00:00")
    assert BERLIN.step(utc("2026-03-30T17:59:00")).valid_until_s == utc("2026-03-30T18:00:00")


def test_schedule_in_the_autumn_repeated_hour() -> None:
    night = ScheduleSource([Rule(frozenset(range(7)), minutes("02:00"), minutes("03:00"), 500.0, "night")],
                           default_budget_w=2000.0, time_zone="Europe/Berlin")
    # 25 October 2026: 02:00-03:00 local happens twice, at 00:00 and 01:00 UTC.
    assert night.step(utc("2026-10-25T00:30:00")).budget_w == 500.0
    assert night.step(utc("2026-10-25T01:30:00")).budget_w == 500.0
    assert night.step(utc("2026-10-25T02:30:00")).budget_w == 2000.0


def test_a_stepped_schedule_reads_as_a_fresh_one_at_every_second_it_is_asked() -> None:
    """A source read each second holds its week's changes until the budget changes (a read of 400 rules took 47 ms
    each second): what it says is still what a fresh source says, across a DST change, a week's end and a clock
    set back."""
    rules = [Rule(WORKDAYS, minutes("08:00"), minutes("20:00"), 1000.0, "work"),
             Rule(frozenset({0, 6}), minutes("12:00"), minutes("13:00"), 800.0, "noon"),
             Rule(frozenset({6}), minutes("01:30"), minutes("03:30"), 600.0, "night"),
             Rule(WORKDAYS, minutes("20:00"), minutes("22:00"), 1000.0, "evening")]  # the same budget, its own why
    stepped = ScheduleSource(rules, 2000.0, "Europe/Berlin")
    times = [utc("2026-03-28T20:00:00") + 600.0 * i for i in range(1300)]  # nine days in ten-minute steps
    times[700:700] = [times[6], times[6] + 1.0, times[-1]]  # set back, then forward past the week
    for t in times:
        fresh = ScheduleSource(rules, 2000.0, "Europe/Berlin").step(t)
        assert stepped.step(t) == fresh, t


def test_a_weekly_window_before_the_autumn_clock_change_is_awaited_not_read_as_never() -> None:
    """A week across the autumn change lasts 169 hours: looked for within 168, a one-minute weekly window's next start
    was never, and the stepped source held `valid_until_s` infinite where a fresh one read the next Wednesday."""
    rules = [Rule(frozenset({2}), minutes("12:00"), minutes("12:01"), 500.0, "wed")]
    stepped = ScheduleSource(rules, 2000.0, "Europe/Berlin")
    start = utc("2026-10-21T10:01:30")  # Wednesday 12:01:30 CEST, just after the window; 25 October in the week after
    assert stepped.step(start).valid_until_s == utc("2026-10-28T11:00:00")  # 12:00 CET
    for t in (start + 600.0 * i for i in range(2016)):  # two weeks in ten-minute steps
        assert stepped.step(t) == ScheduleSource(rules, 2000.0, "Europe/Berlin").step(t), t


@pytest.mark.parametrize(("start", "end", "day"), [("00:00", "02:30", "2026-10-24T22:00:00"),  # ends twice
                                                    ("02:15", "02:45", "2026-10-24T22:00:00"),  # in the repeated hour
                                                    ("02:30", "04:00", "2026-03-28T22:00:00")])  # starts in the gap
def test_a_schedule_says_when_its_budget_changes_across_a_clock_change(start: str, end: str, day: str) -> None:
    """Rule times were read at one reading of the local time only: a rule starting in the spring gap starts as the
    clock jumps, one under way when autumn's clock goes back is in force again for the repeated hour, and each said
    its change up to 30 minutes off (a review). Every minute of the night, stepped and fresh, against a scan."""
    rules = [Rule(frozenset({6}), minutes(start), minutes(end), 500.0, "sunday")]
    stepped = ScheduleSource(rules, 2000.0, "Europe/Berlin")
    grid = [utc(day) + 60.0 * k for k in range(8 * 60)]
    budgets = [stepped.budget_at(t)[0] for t in grid]
    checked = 0
    for i, t in enumerate(grid):
        change = next((grid[j] for j in range(i + 1, len(grid)) if budgets[j] != budgets[i]), None)
        if change is None:  # the night's last change is behind: the next is a week on, past the scan
            break
        checked += 1
        assert stepped.step(t).valid_until_s == change, t
        assert ScheduleSource(rules, 2000.0, "Europe/Berlin").step(t).valid_until_s == change, t
    assert checked >= 120  # the night's changes, two hours of minutes at least


def test_a_csv_past_its_size_is_refused_before_it_is_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 100-MB export took 7.6 s and 1 GB a read (and again whenever it changed); now refused by its size."""
    import controller.budget.carbon_feeds as feeds

    path = tmp_path / "year.csv"
    path.write_text("\n".join([NEW_HEADER, *ROWS]), encoding="utf-8")
    monkeypatch.setattr(feeds, "MAX_CSV_CHARS", len(path.read_text()) - 1)  # a character short of this file
    with pytest.raises(MalformedAnswer, match="keep the days the budget needs") as err:
        CsvIntensityFeed(str(path), retry_s=30.0).fetch(T0)
    assert err.value.retry_after_s == 30.0
    monkeypatch.setattr(feeds, "MAX_CSV_CHARS", len(path.read_text()))
    assert CsvIntensityFeed(str(path)).fetch(T0)
