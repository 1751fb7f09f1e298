"""Deterministic demo data for the reference product schema.

Same spec and seed give the same rows, at any size from a handful of rows to millions
(rows are generated and inserted in batches, never all held at once).

What it contains, per partner: companies (one renamed, one deleted mid-history, one with no
users at all), users with 1-3 services, spans that start and end across months, ~6 %
non-billable users, users who move between companies mid-month, duplicate overlapping spans.
Plus a documented set of bad rows that validation must quarantine (``BAD_ROW_KINDS``),
present in every month of the history.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa

from pipeline.billing.month import add_months
from pipeline.source import product_schema as ps
from pipeline.store.months import bulk_insert

SERVICES = [
    {
        "sku": "SAT",
        "name": "Security Awareness Training",
        "description": "Security awareness training courses per user",
        "gradient_category": "security",
        "gradient_subcategory": "privacy and security awareness training",
    },
    {
        "sku": "PHISH",
        "name": "Phishing Simulation",
        "description": "Simulated phishing campaigns per user",
        "gradient_category": "security",
        "gradient_subcategory": "phishing simulation",
    },
    {
        "sku": "EMAIL",
        "name": "Email Security",
        "description": "Inbound email filtering per mailbox",
        "gradient_category": "security",
        "gradient_subcategory": "email security",
    },
    {
        "sku": "BACKUP",
        "name": "Cloud Backup",
        "description": "Microsoft 365 backup per user",
        "gradient_category": "backup",
        "gradient_subcategory": "cloud backup",
    },
]

PARTNER_NAMES = [
    "Northwind IT",
    "Contoso Managed Services",
    "Fabrikam MSP",
    "Tailspin Networks",
    "Adventure Works Tech",
    "Litware Support",
    "Proseware Cloud",
    "Woodgrove IT",
]
COMPANY_WORDS_A = [
    "Acme",
    "Blue Ridge",
    "Cedar",
    "Delta",
    "Evergreen",
    "Falcon",
    "Granite",
    "Harbor",
    "Ironwood",
    "Juniper",
    "Keystone",
    "Lakeside",
    "Maple",
    "Northgate",
    "Oakridge",
    "Pinecrest",
]
COMPANY_WORDS_B = [
    "Dental",
    "Law Group",
    "Accounting",
    "Logistics",
    "Clinic",
    "Realty",
    "Builders",
    "Insurance",
    "Veterinary",
    "Architects",
    "Consulting",
    "Foods",
]

# Bad rows validation must catch, with the reason a person can act on.
BAD_ROW_KINDS = {
    "span_reversed": "an enrollment that ends before it starts",
    "sku_unknown": "an enrollment in a service the product does not sell (LEGACY-ARCHIVE)",
    "partner_missing": "an enrollment in a company that belongs to no partner",
    "user_missing": "an enrollment with no user",
    "billable_invalid": "an enrollment of a user that is not in the users table",
    "active_from_invalid": "an enrollment whose start is not a timestamp (SQLite only)",
}
UNKNOWN_SKU = "LEGACY-ARCHIVE"
ORPHAN_COMPANY_ID = "c-orphan-0001"
GHOST_USER_ID = "u-ghost-0001"


@dataclass(frozen=True)
class DemoSpec:
    """Size and time frame of the demo data; every field is a parameter."""

    seed: int = 7
    partners: int = 4
    companies_per_partner: tuple[int, int] = (6, 12)
    users_per_company: tuple[int, int] = (5, 40)
    end_month: date = field(default_factory=lambda: date.today().replace(day=1))
    history_months: int = 6
    non_billable_share: float = 0.06
    mover_share: float = 0.03
    duplicate_span_share: float = 0.02
    include_bad_rows: bool = True
    connected_partners: int = 3
    batch_size: int = 20_000
    # Numbering of the first partner minus one: a slice with an offset can be appended to a
    # database that already holds partners 1..offset (``load_demo_data(..., reset=False)``).
    partner_offset: int = 0

    @property
    def first_month(self) -> date:
        return add_months(self.end_month, -(self.history_months - 1))


def _utc(day: date, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


class _Generator:
    def __init__(self, spec: DemoSpec, dialect_name: str, first_enrollment_id: int = 1) -> None:
        self.spec = spec
        self.dialect = dialect_name
        self.rng = random.Random(spec.seed)
        self.history_start = _utc(spec.first_month)
        self.history_end = _utc(add_months(spec.end_month, 1))
        self.created = self.history_start - timedelta(days=400)
        self.enrollment_id = first_enrollment_id - 1
        self.partner_rows: list[dict] = []
        self.company_rows: list[dict] = []
        self._company_plan: list[tuple[dict, int]] = []
        self._deleted_at: dict[str, datetime] = {}
        self._plan_partners_and_companies()

    def ts(self, value: datetime | str | None) -> datetime | str | None:
        return ps.to_db_timestamp(value, self.dialect)

    def random_instant(self, start: datetime, end: datetime) -> datetime:
        seconds = int((end - start).total_seconds())
        return start + timedelta(seconds=self.rng.randrange(max(seconds, 1)))

    def _plan_partners_and_companies(self) -> None:
        spec, rng = self.spec, self.rng
        for p in range(spec.partner_offset, spec.partner_offset + spec.partners):
            partner_id = f"p-{p + 1:03d}"
            name = PARTNER_NAMES[p % len(PARTNER_NAMES)]
            if p >= len(PARTNER_NAMES):
                name = f"{name} {p // len(PARTNER_NAMES) + 1}"
            self.partner_rows.append({"partner_id": partner_id, "name": name, "created_at": self.ts(self.created)})
            n_companies = rng.randint(*spec.companies_per_partner)
            for c in range(n_companies):
                company_id = f"c-{p + 1:03d}-{c + 1:04d}"
                name = f"{rng.choice(COMPANY_WORDS_A)} {rng.choice(COMPANY_WORDS_B)} {c + 1}"
                row = {
                    "company_id": company_id,
                    "partner_id": partner_id,
                    "name": name,
                    "status": "active",
                    "deleted_at": None,
                    "created_at": self.ts(self.created),
                    "updated_at": self.ts(self.created),
                }
                users = rng.randint(*spec.users_per_company)
                if c == 1 and n_companies > 2:
                    # renamed: the product shows the new name, Gradient may still have the old one
                    row["name"] = f"{name} (renamed)"
                    row["updated_at"] = self.ts(self.history_end - timedelta(days=3))
                if c == 2 and n_companies > 3:
                    deleted = self.random_instant(
                        self.history_start + timedelta(days=40), self.history_end - timedelta(days=40)
                    )
                    row["status"] = "deleted"
                    row["deleted_at"] = self.ts(deleted)
                    self._deleted_at[company_id] = deleted
                    row["updated_at"] = self.ts(deleted)
                if c == n_companies - 1 and n_companies > 1:
                    users = 0  # an account with no users at all
                self.company_rows.append(row)
                self._company_plan.append((row, users))
        if spec.include_bad_rows:
            self.company_rows.append(
                {
                    "company_id": ORPHAN_COMPANY_ID,
                    "partner_id": None,
                    "name": "Orphaned Company",
                    "status": "active",
                    "deleted_at": None,
                    "created_at": self.ts(self.created),
                    "updated_at": self.ts(self.created),
                }
            )

    def _enrollment(
        self,
        user_id: str | None,
        company_id: str | None,
        sku: str | None,
        started: datetime | str | None,
        ended: datetime | str | None,
    ) -> dict:
        self.enrollment_id += 1
        return {
            "enrollment_id": self.enrollment_id,
            "user_id": user_id,
            "company_id": company_id,
            "sku": sku,
            "started_at": self.ts(started),
            "ended_at": self.ts(ended),
            "updated_at": self.ts(self.history_start),
        }

    def users_and_enrollments(self) -> Iterator[tuple[list[dict], list[dict]]]:
        """Yields (users, enrollments) per company, so memory stays bounded."""
        spec, rng = self.spec, self.rng
        skus = [s["sku"] for s in SERVICES]
        by_partner: dict[str, list[dict]] = {}
        for row, _ in self._company_plan:
            by_partner.setdefault(row["partner_id"], []).append(row)
        for company, n_users in self._company_plan:
            users: list[dict] = []
            enrollments: list[dict] = []
            siblings = [
                c
                for c in by_partner[company["partner_id"]]
                if c is not company and c["company_id"] not in self._deleted_at
            ]
            for u in range(n_users):
                user_id = f"u-{company['company_id'][2:]}-{u + 1:05d}"
                users.append(
                    {
                        "user_id": user_id,
                        "email": f"user{u + 1}@{company['company_id']}.example",
                        "is_billable": rng.random() >= spec.non_billable_share,
                    }
                )
                active_until = self._deleted_at.get(company["company_id"], self.history_end)
                if rng.random() < 0.7:
                    started = self.random_instant(self.created, self.history_start)
                else:
                    started = self.random_instant(self.history_start, active_until)
                ended = None
                if rng.random() < 0.2:
                    ended = self.random_instant(started, self.history_end + timedelta(days=60))
                    if ended >= self.history_end:
                        ended = None
                user_skus = rng.sample(skus, rng.randint(1, 3))
                mover = siblings and rng.random() < spec.mover_share
                move_at = None
                if mover:
                    move_at = self.random_instant(max(started, self.history_start) + timedelta(days=1), active_until)
                    target = rng.choice(siblings)
                    if move_at >= active_until or (ended is not None and move_at >= ended):
                        move_at = None
                for sku in user_skus:
                    first_end = move_at if move_at else ended
                    enrollments.append(self._enrollment(user_id, company["company_id"], sku, started, first_end))
                    if move_at:
                        enrollments.append(self._enrollment(user_id, target["company_id"], sku, move_at, ended))
                    if rng.random() < spec.duplicate_span_share:
                        dup_start = started + timedelta(days=rng.randint(1, 20))
                        enrollments.append(self._enrollment(user_id, company["company_id"], sku, dup_start, first_end))
            yield users, enrollments

    def bad_rows(self) -> tuple[list[dict], list[dict]]:
        """One row of every bad kind, overlapping every month of the history."""
        first_partner_company = self._company_plan[0][0]["company_id"]
        users = [
            {"user_id": "u-bad-0001", "email": "bad1@example.invalid", "is_billable": True},
            {"user_id": "u-bad-0002", "email": "bad2@example.invalid", "is_billable": True},
            {"user_id": "u-bad-0003", "email": "bad3@example.invalid", "is_billable": True},
            {"user_id": "u-bad-0004", "email": "bad4@example.invalid", "is_billable": True},
        ]
        rows: list[dict] = []
        month = self.spec.first_month
        while month <= self.spec.end_month:
            start = _utc(month, 12)
            rows.append(
                self._enrollment(
                    "u-bad-0001",
                    first_partner_company,
                    "SAT",
                    start + timedelta(days=9),
                    start + timedelta(days=4),
                )
            )
            month = add_months(month, 1)
        always = self.history_start - timedelta(days=30)
        rows.append(self._enrollment("u-bad-0002", first_partner_company, UNKNOWN_SKU, always, None))
        rows.append(self._enrollment("u-bad-0003", ORPHAN_COMPANY_ID, "SAT", always, None))
        rows.append(self._enrollment(None, first_partner_company, "PHISH", always, None))
        rows.append(self._enrollment(GHOST_USER_ID, first_partner_company, "EMAIL", always, None))
        if self.dialect == "sqlite":
            rows.append(self._enrollment("u-bad-0004", first_partner_company, "SAT", "not-a-date", None))
        return users, rows


@dataclass(frozen=True)
class DemoSummary:
    partners: int
    companies: int
    users: int
    enrollments: int
    bad_rows: int


def demo_partner_key(partner_id: str) -> str:
    """The demo partner's Gradient API key (what the partner would paste into the product)."""
    return f"demo-partner-key-{partner_id}"


def connection_rows(
    partner_ids: list[str], encryption_keys: str, connected_at: datetime, dialect_name: str
) -> list[dict]:
    """Rows of ``gradient_connections`` as the product's Connect button writes them."""
    from pipeline.gradient.partner_keys import encrypt_partner_key

    at = ps.to_db_timestamp(connected_at, dialect_name)
    return [
        {
            "partner_id": pid,
            "encrypted_api_key": encrypt_partner_key(demo_partner_key(pid), encryption_keys),
            "state": "connected",
            "connected_at": at,
            "disconnected_at": None,
            "updated_at": at,
        }
        for pid in partner_ids
    ]


def _insert_batched(conn: sa.Connection, table: sa.Table, rows: list[dict], batch: int) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg2":
        bulk_insert(conn, table, rows)  # COPY: millions of demo rows in minutes, not hours
        return
    for i in range(0, len(rows), batch):
        conn.execute(table.insert(), rows[i : i + batch])


def load_demo_data(
    engine: sa.Engine,
    spec: DemoSpec | None = None,
    *,
    reset: bool = True,
    encryption_keys: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DemoSummary:
    """Create the reference schema (dropping it first when ``reset``) and fill it with demo rows.

    With ``encryption_keys``, the first ``spec.connected_partners`` partners are connected to
    Gradient with their demo keys (``demo_partner_key``), encrypted as the product would.
    Without ``reset`` the rows are appended: give the spec a ``partner_offset`` past the
    partners already there and ``include_bad_rows=False`` (the bad rows exist once).
    ``progress(companies_done, companies_total)`` is called as each company's rows are made.
    """
    spec = spec or DemoSpec()
    ps.create_product_schema(engine, drop_first=reset)
    with engine.connect() as conn:
        last_enrollment = conn.execute(sa.select(sa.func.max(ps.service_enrollments.c.enrollment_id))).scalar()
        has_services = conn.execute(sa.select(sa.func.count()).select_from(ps.services)).scalar_one() > 0
    gen = _Generator(spec, engine.dialect.name, first_enrollment_id=(last_enrollment or 0) + 1)
    counts = {"users": 0, "enrollments": 0, "bad": 0}
    with engine.begin() as conn:
        if not has_services:
            conn.execute(ps.services.insert(), SERVICES)
        conn.execute(ps.partners.insert(), gen.partner_rows)
        _insert_batched(conn, ps.companies, gen.company_rows, spec.batch_size)
        user_buf: list[dict] = []
        enr_buf: list[dict] = []
        total_companies = len(gen._company_plan)  # companies that get users (the ownerless one does not)
        for done, (users, enrollments) in enumerate(gen.users_and_enrollments(), start=1):
            if progress is not None:
                progress(done, total_companies)
            user_buf.extend(users)
            enr_buf.extend(enrollments)
            counts["users"] += len(users)
            counts["enrollments"] += len(enrollments)
            if len(enr_buf) >= spec.batch_size:
                _insert_batched(conn, ps.users, user_buf, spec.batch_size)
                _insert_batched(conn, ps.service_enrollments, enr_buf, spec.batch_size)
                user_buf, enr_buf = [], []
        if spec.include_bad_rows:
            bad_users, bad_rows = gen.bad_rows()
            user_buf.extend(bad_users)
            enr_buf.extend(bad_rows)
            counts["bad"] = len(bad_rows)
            counts["enrollments"] += len(bad_rows)
        _insert_batched(conn, ps.users, user_buf, spec.batch_size)
        _insert_batched(conn, ps.service_enrollments, enr_buf, spec.batch_size)
        connected = [p["partner_id"] for p in gen.partner_rows[: spec.connected_partners]]
        if encryption_keys and connected:
            conn.execute(
                ps.gradient_connections.insert(),
                connection_rows(connected, encryption_keys, gen.created, engine.dialect.name),
            )
    return DemoSummary(
        partners=len(gen.partner_rows),
        companies=len(gen.company_rows),
        users=counts["users"],
        enrollments=counts["enrollments"],
        bad_rows=counts["bad"],
    )
