"""Billing months: half-open windows ``[1st 00:00, next 1st 00:00)`` in the billing time zone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo


def first_of_month(day: date) -> date:
    return day.replace(day=1)


def add_months(month: date, months: int) -> date:
    index = month.year * 12 + (month.month - 1) + months
    return date(index // 12, index % 12 + 1, 1)


@dataclass(frozen=True, order=True)
class BillingMonth:
    """One billing month; ``start``/``end`` are aware datetimes in the billing time zone."""

    month: date
    tz_name: str

    def __post_init__(self) -> None:
        if self.month.day != 1:
            raise ValueError(f"a billing month starts on the 1st, got {self.month.isoformat()}")

    @classmethod
    def from_partition_key(cls, key: str, tz_name: str) -> BillingMonth:
        return cls(date.fromisoformat(key[:10]), tz_name)

    @property
    def key(self) -> str:
        """The Dagster partition key: the month's first day."""
        return self.month.isoformat()

    @property
    def label(self) -> str:
        return self.month.strftime("%Y-%m")

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.tz_name)

    @property
    def start(self) -> datetime:
        return datetime(self.month.year, self.month.month, 1, tzinfo=self.tz)

    @property
    def end(self) -> datetime:
        nxt = add_months(self.month, 1)
        return datetime(nxt.year, nxt.month, 1, tzinfo=self.tz)

    @property
    def start_utc(self) -> datetime:
        return self.start.astimezone(UTC)

    @property
    def end_utc(self) -> datetime:
        return self.end.astimezone(UTC)

    def previous(self) -> BillingMonth:
        return BillingMonth(add_months(self.month, -1), self.tz_name)

    def next(self) -> BillingMonth:
        return BillingMonth(add_months(self.month, 1), self.tz_name)

    def overlaps(self, active_from: datetime, active_to: datetime | None) -> bool:
        """Half-open overlap of ``[active_from, active_to)`` with the month (an empty span,
        ``active_to == active_from``, overlaps nothing)."""
        if active_to is None:
            return active_from < self.end
        return active_from < self.end and active_to > self.start and active_to > active_from


def last_closed_month(now: datetime, tz_name: str) -> BillingMonth:
    """The newest month that has ended at ``now`` in the billing time zone."""
    local = now.astimezone(ZoneInfo(tz_name))
    return BillingMonth(add_months(first_of_month(local.date()), -1), tz_name)


def last_closed_months(now: datetime, tz_name: str, count: int) -> list[BillingMonth]:
    """The ``count`` newest closed months, oldest first."""
    newest = last_closed_month(now, tz_name)
    return [BillingMonth(add_months(newest.month, -i), tz_name) for i in range(count - 1, -1, -1)]
