"""The monthly schedule: on the 1st at 08:00 America/New_York, bill the month that just closed.

Evaluated through Dagster itself (``build_schedule_context`` + ``evaluate_tick``) and with
Dagster's own cron iterator for the tick times. Rules: ``/work/shared/design.md`` ("Automation").
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._utils.schedules import cron_string_iterator

from pipeline.definitions import defs
from pipeline.automation.jobs import TAG_PARTNER, TAG_REASON, TAG_TRIGGER, monthly_billing_job
from pipeline.partitions import monthly_partitions
from pipeline.automation.schedules import build_monthly_billing_schedule, monthly_billing_schedule
from pipeline.automation.triggers import scheduled_load_time
from pipeline.billing.month import BillingMonth
from pipeline.settings import load_settings

NY = ZoneInfo("America/New_York")
UTC = timezone.utc


@pytest.fixture(autouse=True)
def _default_billing_timezone(monkeypatch):
    for name in ("BILLING_TIMEZONE", "BILLING_SCHEDULE_DAY", "BILLING_SCHEDULE_TIME", "BILLING_SCHEDULE_TIMEZONE"):
        monkeypatch.delenv(name, raising=False)


def tick(when: datetime) -> dg.RunRequest:
    """Evaluate the schedule as the daemon would at ``when``; exactly one run request."""
    context = dg.build_schedule_context(
        scheduled_execution_time=when, repository_def=defs.get_repository_def()
    )
    data = monthly_billing_schedule.evaluate_tick(context)
    assert data.skip_message is None
    assert data.run_requests is not None and len(data.run_requests) == 1
    return data.run_requests[0]


def ny(year: int, month: int, day: int = 1, hour: int = 8, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=NY)


# =========================================================================== definition


def test_schedule_definition_cron_timezone_job_and_default_status():
    assert monthly_billing_schedule.cron_schedule == "0 8 1 * *"
    assert monthly_billing_schedule.execution_timezone == "America/New_York"
    assert monthly_billing_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert monthly_billing_schedule.job_name == monthly_billing_job.name == "monthly_billing"
    # it is the one schedule of the code location
    assert defs.resolve_schedule_def("monthly_billing_schedule") is not None
    assert [s.name for s in defs.schedules] == ["monthly_billing_schedule"]


def test_the_clock_is_a_setting_and_follows_the_billing_timezone(monkeypatch):
    monkeypatch.setenv("BILLING_TIMEZONE", "Asia/Tokyo")
    monkeypatch.setenv("BILLING_SCHEDULE_DAY", "3")
    monkeypatch.setenv("BILLING_SCHEDULE_TIME", "06:30")
    schedule = build_monthly_billing_schedule(load_settings())
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 6 3 * *", "Asia/Tokyo")
    assert schedule.name == "monthly_billing_schedule"
    tokyo = ZoneInfo("Asia/Tokyo")
    ticks = cron_string_iterator(datetime(2026, 10, 15, tzinfo=tokyo).timestamp(), schedule.cron_schedule,
                                 schedule.execution_timezone)
    first = next(ticks)
    assert first.isoformat() == "2026-11-03T06:30:00+09:00"
    request = schedule(dg.build_schedule_context(scheduled_execution_time=first))
    assert request.partition_key == "2026-10-01"
    # the late-months sensor waits for the same clock before calling a month missed
    assert scheduled_load_time(BillingMonth(datetime(2026, 10, 1).date(), "Asia/Tokyo")) == first


# =========================================================================== one tick


def test_tick_on_november_first_bills_october():
    request = tick(ny(2026, 11, 1))
    assert request.partition_key == "2026-10-01"
    assert request.run_key == "scheduled:2026-10-01"
    assert request.tags[TAG_TRIGGER] == "schedule"
    assert request.tags[TAG_PARTNER] == "all"
    assert "2026-10" in request.tags[TAG_REASON]
    # Dagster tags the run with the partition and the schedule
    assert request.tags["dagster/partition"] == "2026-10-01"
    assert request.tags["dagster/schedule_name"] == "monthly_billing_schedule"
    # no partner filter: every connected partner is billed (the job's default config)
    assert not any(op["config"].get("partner_ids") for op in request.run_config.get("ops", {}).values())


def test_direct_invocation_matches_evaluated_tick():
    context = dg.build_schedule_context(scheduled_execution_time=ny(2026, 11, 1))
    request = monthly_billing_schedule(context)
    assert isinstance(request, dg.RunRequest)
    assert (request.partition_key, request.run_key) == ("2026-10-01", "scheduled:2026-10-01")


@pytest.mark.parametrize(
    ("when", "partition"),
    [
        # 2026-03-08: US DST starts; 1 March is still EST (-05:00), 1 April EDT (-04:00)
        (ny(2026, 3, 1), "2026-02-01"),
        (ny(2026, 4, 1), "2026-03-01"),
        # 2026-11-01 02:00 EDT -> 01:00 EST: the tick at 08:00 is already EST (13:00 UTC)
        (ny(2026, 11, 1), "2026-10-01"),
        # new year
        (ny(2027, 1, 1), "2026-12-01"),
        # the same instants given in UTC, as the daemon may hand them over
        (datetime(2026, 3, 1, 13, 0, tzinfo=UTC), "2026-02-01"),
        (datetime(2026, 4, 1, 12, 0, tzinfo=UTC), "2026-03-01"),
        (datetime(2026, 11, 1, 13, 0, tzinfo=UTC), "2026-10-01"),
        (datetime(2027, 1, 1, 13, 0, tzinfo=UTC), "2026-12-01"),
        # leap year February closes on the 29th
        (ny(2028, 3, 1), "2028-02-01"),
    ],
)
def test_tick_bills_the_month_that_just_closed(when, partition):
    request = tick(when)
    assert request.partition_key == partition
    assert request.run_key == f"scheduled:{partition}"


def test_dst_instants_really_differ_by_offset():
    """Guard on the fixtures above: the March and November ticks straddle DST changes."""
    assert ny(2026, 3, 1).utcoffset() == timedelta(hours=-5)
    assert ny(2026, 4, 1).utcoffset() == timedelta(hours=-4)
    assert ny(2026, 11, 1).utcoffset() == timedelta(hours=-5)
    assert ny(2026, 10, 1).utcoffset() == timedelta(hours=-4)


@pytest.mark.parametrize("tz_name", ["Pacific/Auckland", "Pacific/Honolulu", "Europe/London", "UTC"])
def test_tick_bills_the_closed_month_in_other_billing_timezones(monkeypatch, tz_name):
    """08:00 New York on the 1st is already the 1st (or the 2nd) in every billing time zone
    the product may use, so the month that just closed is always the previous one."""
    monkeypatch.setenv("BILLING_TIMEZONE", tz_name)
    for when, partition in [
        (ny(2026, 11, 1), "2026-10-01"),
        (ny(2027, 1, 1), "2026-12-01"),
        (ny(2026, 3, 1), "2026-02-01"),
    ]:
        request = monthly_billing_schedule(dg.build_schedule_context(scheduled_execution_time=when))
        assert request.partition_key == partition, (tz_name, when)


# =========================================================================== tick times


def next_ticks(after: datetime, n: int) -> list[datetime]:
    ticks = cron_string_iterator(
        after.timestamp(),
        monthly_billing_schedule.cron_schedule,
        monthly_billing_schedule.execution_timezone,
    )
    return [next(ticks) for _ in range(n)]


def test_dagster_computes_the_next_ticks_at_eight_new_york_time():
    ticks = next_ticks(datetime(2026, 10, 15, 12, 0, tzinfo=NY), 7)
    assert [t.isoformat() for t in ticks] == [
        "2026-11-01T08:00:00-05:00",
        "2026-12-01T08:00:00-05:00",
        "2027-01-01T08:00:00-05:00",
        "2027-02-01T08:00:00-05:00",
        "2027-03-01T08:00:00-05:00",  # before DST starts (2027-03-14)
        "2027-04-01T08:00:00-04:00",  # after
        "2027-05-01T08:00:00-04:00",
    ]
    # always 08:00 wall clock in New York, whatever the UTC offset
    for t in ticks:
        local = t.astimezone(NY)
        assert (local.day, local.hour, local.minute) == (1, 8, 0)


def test_dagster_ticks_around_the_november_dst_change():
    # 2026-11-01: the clocks go back at 02:00; the tick is still once, at 08:00 EST
    ticks = next_ticks(datetime(2026, 10, 31, 23, 0, tzinfo=NY), 2)
    assert ticks[0] == datetime(2026, 11, 1, 13, 0, tzinfo=UTC)
    assert ticks[1] == datetime(2026, 12, 1, 13, 0, tzinfo=UTC)
    # 2027-11-07 changes back in a month without a tick on that day: 1 Nov 2027 is still EDT
    ticks = next_ticks(datetime(2027, 10, 2, tzinfo=NY), 2)
    assert ticks[0].isoformat() == "2027-11-01T08:00:00-04:00"
    assert ticks[1].isoformat() == "2027-12-01T08:00:00-05:00"


def test_dagster_next_tick_right_after_a_tick_is_the_following_month():
    tick_time = datetime(2026, 11, 1, 8, 0, tzinfo=NY)
    (following,) = next_ticks(tick_time + timedelta(seconds=1), 1)
    assert following.isoformat() == "2026-12-01T08:00:00-05:00"


def test_every_tick_of_two_years_asks_for_the_previous_month_once():
    """Fed Dagster's own ticks, the schedule asks for each month exactly once, in order, and
    the partition it asks for already exists at tick time (end_offset=0 + closed month)."""
    ticks = next_ticks(datetime(2026, 10, 15, tzinfo=NY), 24)
    requests = [tick(t) for t in ticks]
    partitions = [r.partition_key for r in requests]
    assert partitions[0] == "2026-10-01"
    assert partitions[-1] == "2028-09-01"
    assert len(set(partitions)) == 24
    assert len({r.run_key for r in requests}) == 24
    for t, partition in zip(ticks, partitions):
        # the month before the tick's month, in New York time
        local = t.astimezone(NY)
        year, month = (local.year, local.month - 1) if local.month > 1 else (local.year - 1, 12)
        assert partition == f"{year:04d}-{month:02d}-01"
        assert partition in monthly_partitions.get_partition_keys(current_time=t)
