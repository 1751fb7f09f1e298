"""A tiny builder of reference-product-schema rows for tests, plus helpers to run a month.

Rows go into the reference schema (``pipeline.source.product_schema``) on either dialect: timestamps
are given as aware datetimes and written with ``to_db_timestamp`` (ISO-8601 UTC text on
SQLite, timestamptz on PostgreSQL). A raw string is written as it is, which is how the
tests put non-timestamp values into SQLite.

``run_month`` runs what the month-end assets run — ``validate_month`` then
``store_billable_counts`` with the reference query — and returns the counts as stored and the
validation record. Within the validation's run the counts are the pass's own, staged and
promoted; ``count`` with another ``run_id`` counts afresh and reconciles, as a later run does.

``oracle_counts`` is a brute-force, pure-Python reading of the billing rules in
``/work/shared/design.md`` (plus the reference query's "a deleted company ends its users'
spans at its deletion"), used by the property test and the demo-data tests.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa

from pipeline.source import product_schema as ps
from pipeline.billing.month import BillingMonth
from pipeline.billing.counts import store_billable_counts
from pipeline.validation.month import validate_month
from pipeline.store.months import MonthValidation, load_billable_counts
from pipeline.store.schema import ensure_state_schema
from pipeline.source.utilization import SourceQuery, load_known_skus, utilization_query

NY = "America/New_York"
UTC = timezone.utc
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)

DEFAULT_SERVICES = ("SAT", "PHISH", "EMAIL")


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
       microsecond: int = 0, tz: str = NY) -> datetime:
    """An aware local time in ``tz`` (America/New_York unless told)."""
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=ZoneInfo(tz))


def _no_fsync(dbapi_conn, _record) -> None:
    dbapi_conn.execute("PRAGMA synchronous = OFF")


def fast_sqlite(engine: sa.Engine) -> sa.Engine:
    """Throwaway SQLite test files need no fsync per commit (tests commit a lot)."""
    if engine.dialect.name == "sqlite" and not sa.event.contains(engine, "connect", _no_fsync):
        sa.event.listen(engine, "connect", _no_fsync)
        engine.dispose()  # pooled connections reconnect with the pragma
    return engine


class ProductRows:
    """Writes reference-schema rows; every call inserts at once (tests are small)."""

    def __init__(self, engine: sa.Engine, *, create: bool = True) -> None:
        self.engine = fast_sqlite(engine)
        self.dialect = engine.dialect.name
        self._enrollment_ids = itertools.count(1)
        if create:
            ps.create_product_schema(engine)

    # -------------------------------------------------------------- helpers
    def ts(self, value: datetime | str | None) -> datetime | str | None:
        """Aware datetimes through ``to_db_timestamp``; anything else (text, numbers) as it is."""
        if not isinstance(value, datetime):
            return value
        return ps.to_db_timestamp(value, self.dialect)

    def _insert(self, table: sa.Table, rows: Sequence[dict]) -> None:
        if rows:
            with self.engine.begin() as conn:
                conn.execute(table.insert(), list(rows))

    def reset(self) -> None:
        """Empty every product table (keeps the schema)."""
        with self.engine.begin() as conn:
            for table in reversed(ps.metadata.sorted_tables):
                conn.execute(table.delete())
        self._enrollment_ids = itertools.count(1)

    # -------------------------------------------------------------- rows
    def services(self, *skus: str) -> "ProductRows":
        self._insert(
            ps.services,
            [
                {"sku": sku, "name": f"Service {sku}", "gradient_category": "security",
                 "gradient_subcategory": sku.lower()}
                for sku in (skus or DEFAULT_SERVICES)
            ],
        )
        return self

    def partner(self, partner_id: str, name: str | None = None) -> "ProductRows":
        self._insert(
            ps.partners,
            [{"partner_id": partner_id, "name": name or f"Partner {partner_id}", "created_at": self.ts(EPOCH)}],
        )
        return self

    def company(
        self,
        company_id: str,
        partner_id: str | None,
        name: str | None = "",
        *,
        deleted_at: datetime | str | None = None,
    ) -> "ProductRows":
        """``name=""`` means "Company <id>"; ``None`` stores a company without a name."""
        self._insert(
            ps.companies,
            [
                {
                    "company_id": company_id,
                    "partner_id": partner_id,
                    "name": f"Company {company_id}" if name == "" else name,
                    "status": "deleted" if deleted_at is not None else "active",
                    "deleted_at": self.ts(deleted_at),
                    "created_at": self.ts(EPOCH),
                    "updated_at": self.ts(EPOCH),
                }
            ],
        )
        return self

    def user(self, user_id: str, billable: bool | None = True) -> "ProductRows":
        self._insert(
            ps.users, [{"user_id": user_id, "email": f"{user_id}@example.test", "is_billable": billable}]
        )
        return self

    def users(self, *user_ids: str, billable: bool | None = True) -> "ProductRows":
        self._insert(
            ps.users,
            [{"user_id": u, "email": f"{u}@example.test", "is_billable": billable} for u in user_ids],
        )
        return self

    def enroll(
        self,
        user_id: str | None,
        company_id: str | None,
        sku: str | None,
        start: datetime | str | None,
        end: datetime | str | None = None,
    ) -> int:
        """One service enrollment ``[start, end)``; returns its id."""
        enrollment_id = next(self._enrollment_ids)
        self._insert(ps.service_enrollments, [self._enrollment_row(enrollment_id, user_id, company_id, sku, start, end)])
        return enrollment_id

    def enroll_many(self, spans: Iterable[tuple]) -> None:
        """Many ``(user_id, company_id, sku, start, end)`` enrollments in one statement."""
        rows = [self._enrollment_row(next(self._enrollment_ids), *span) for span in spans]
        self._insert(ps.service_enrollments, rows)

    def _enrollment_row(self, enrollment_id, user_id, company_id, sku, start, end) -> dict:
        return {
            "enrollment_id": enrollment_id,
            "user_id": user_id,
            "company_id": company_id,
            "sku": sku,
            "started_at": self.ts(start),
            "ended_at": self.ts(end),
            "updated_at": self.ts(EPOCH),
        }

    def basic(self) -> "ProductRows":
        """Services SAT/PHISH/EMAIL, partner p1 with company c1 (most tests start here)."""
        return self.services().partner("p1").company("c1", "p1")


# ------------------------------------------------------------------ running a month


def reference_query(engine: sa.Engine) -> SourceQuery:
    return utilization_query(None, engine.dialect.name)


def known_skus(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return load_known_skus(conn, None)


def validate(
    product_engine: sa.Engine,
    state_engine: sa.Engine,
    month_key: str,
    tz: str = NY,
    *,
    query: SourceQuery | None = None,
    skus: Sequence[str] | None = None,
    run_id: str = "test-run",
    chunk_rows: int = 50_000,
) -> MonthValidation:
    """``validate_month`` alone (asserts the contract held)."""
    ensure_state_schema(fast_sqlite(state_engine))
    month = BillingMonth.from_partition_key(month_key, tz)
    query = query or reference_query(product_engine)
    skus = list(skus) if skus is not None else known_skus(product_engine)
    with product_engine.connect() as conn:
        outcome = validate_month(conn, state_engine, query, month, skus, run_id, chunk_rows)
    assert not outcome.contract_violations, outcome.contract_violations
    return outcome.validation


def count(
    product_engine: sa.Engine,
    state_engine: sa.Engine,
    month_key: str,
    validation: MonthValidation,
    tz: str = NY,
    *,
    query: SourceQuery | None = None,
    run_id: str = "test-run",
) -> pd.DataFrame:
    """``store_billable_counts`` alone; the month's counts as stored."""
    month = BillingMonth.from_partition_key(month_key, tz)
    query = query or reference_query(product_engine)
    with product_engine.connect() as conn:
        store_billable_counts(conn, state_engine, query, month, validation, run_id)
    return load_billable_counts(state_engine, month.month)


def run_month(
    product_engine: sa.Engine,
    state_engine: sa.Engine,
    month_key: str,
    tz: str = NY,
    *,
    query: SourceQuery | None = None,
    skus: Sequence[str] | None = None,
    run_id: str = "test-run",
    chunk_rows: int = 50_000,
) -> tuple[pd.DataFrame, MonthValidation]:
    """validate_month + store_billable_counts with the reference query (or ``query``)."""
    validation = validate(
        product_engine, state_engine, month_key, tz, query=query, skus=skus, run_id=run_id,
        chunk_rows=chunk_rows,
    )
    counts = count(product_engine, state_engine, month_key, validation, tz, query=query, run_id=run_id)
    return counts, validation


def as_dict(counts: pd.DataFrame) -> dict[tuple[str, str, str], int]:
    """``{(partner_id, company_id, sku): billable_users}``."""
    return {
        (r.partner_id, r.company_id, r.sku): int(r.billable_users)
        for r in counts.itertuples(index=False)
    }


# ------------------------------------------------------------------ the oracle


@dataclass(frozen=True)
class Enrollment:
    """One enrollment as the tests model it (ids may be None; times aware or None)."""

    user_id: str | None
    company_id: str | None
    sku: str | None
    start: datetime | None
    end: datetime | None
    unreadable: bool = False  # a timestamp is stored as text that is not a timestamp


@dataclass(frozen=True)
class Company:
    company_id: str
    partner_id: str | None
    name: str | None
    deleted_at: datetime | None = None


@dataclass(frozen=True)
class OracleResult:
    counts: dict[tuple[str, str, str], int]
    rows_in: int
    rows_quarantined: int


def oracle_counts(
    month: BillingMonth,
    enrollments: Iterable[Enrollment],
    companies: dict[str, Company],
    partners: set[str],
    users: dict[str, bool | None],
    skus: set[str],
    *,
    query_filters_month: bool = True,
) -> OracleResult:
    """The billing rules, brute force, over the reference schema's model.

    * the reference query returns an enrollment when it may overlap the month (by its own
      start/end and its company's deletion); with ``query_filters_month=False`` every
      enrollment is returned (a vendor query without a month filter);
    * a deleted company ends the span at its deletion;
    * a row is billable input when every id is present, the company has a name and a partner
      that exists, the sku is sold, the user has a billable flag, the span has a start and
      does not end before it starts; every other returned row is quarantined;
    * billable users of (partner, company, sku) = distinct billable users of valid rows whose
      half-open span overlaps the month (``BillingMonth.overlaps``); a group with only
      non-billable users is there with 0.
    """
    rows_in = quarantined = 0
    groups: dict[tuple[str, str, str], set[str]] = {}
    for e in enrollments:
        company = companies.get(e.company_id) if e.company_id is not None else None
        deleted = company.deleted_at if company else None
        # the reference query's WHERE (an unreadable timestamp is returned, to be quarantined)
        if query_filters_month:
            if e.start is not None and not e.start < month.end:
                continue
            if e.end is not None and not e.end > month.start:
                continue
            if deleted is not None and not deleted > month.start:
                continue
        rows_in += 1
        if e.unreadable:
            quarantined += 1
            continue
        active_to = e.end
        if deleted is not None and (e.end is None or deleted < e.end):
            active_to = deleted
        partner = company.partner_id if company and company.partner_id in partners else None
        billable = users.get(e.user_id) if e.user_id is not None else None

        def present(v: str | None) -> bool:
            return v is not None and v.strip(" ") != ""

        valid = (
            present(partner)
            and present(e.company_id)
            and company is not None
            and present(company.name)
            and present(e.sku)
            and e.sku in skus
            and present(e.user_id)
            and billable is not None
            and e.start is not None
            and (active_to is None or active_to >= e.start)
        )
        if not valid:
            quarantined += 1
            continue
        if month.overlaps(e.start, active_to):
            users_of_group = groups.setdefault((partner, e.company_id, e.sku), set())
            if billable:
                users_of_group.add(e.user_id)
    return OracleResult(
        counts={key: len(u) for key, u in groups.items()},
        rows_in=rows_in,
        rows_quarantined=quarantined,
    )


UNREADABLE = object()


def _readable(value):
    return None if value is UNREADABLE else value


def read_reference_model(engine: sa.Engine):
    """The product tables read back as the oracle's model (timestamps parsed in Python).

    Returns (enrollments, companies, partners, users, skus). Unreadable timestamp text is
    read as None, which the oracle treats as "no start" (quarantined).
    """

    def parse(value):
        if value is None or value is UNREADABLE:
            return None
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        try:
            parsed = datetime.fromisoformat(value)
            date.fromisoformat(value[:10])
        except ValueError:
            return UNREADABLE
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    def enrollment(r) -> Enrollment:
        start, end = parse(r.started_at), parse(r.ended_at)
        unreadable = start is UNREADABLE or end is UNREADABLE
        return Enrollment(
            r.user_id, r.company_id, r.sku,
            None if start is UNREADABLE else start,
            None if end is UNREADABLE else end,
            unreadable,
        )

    with engine.connect() as conn:
        partners = {r.partner_id for r in conn.execute(sa.select(ps.partners))}
        companies = {
            r.company_id: Company(r.company_id, r.partner_id, r.name, _readable(parse(r.deleted_at)))
            for r in conn.execute(sa.select(ps.companies))
        }
        users = {r.user_id: r.is_billable for r in conn.execute(sa.select(ps.users))}
        skus = {r.sku for r in conn.execute(sa.select(ps.services))}
        enrollments = [enrollment(r) for r in conn.execute(sa.select(ps.service_enrollments))]
    return enrollments, companies, partners, users, skus


def month_key(day: date) -> str:
    return day.replace(day=1).isoformat()
