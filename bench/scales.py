"""The benchmark's dataset sizes: demo data shaped like a vendor's partners, by scale."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from pipeline.demo.data import DemoSpec

# The month measured, and the demo history around it (the month is complete: data runs to
# the end of the next one).
MONTH = date(2026, 10, 1)
END_MONTH = date(2026, 11, 1)
HISTORY_MONTHS = 6


@dataclass(frozen=True)
class Scale:
    """One benchmark size. ``load_calls`` is how many count calls the load should make (enough
    partners are connected for it); None connects every partner."""

    name: str
    partners: int
    companies_per_partner: tuple[int, int]
    users_per_company: tuple[int, int]
    load_calls: int | None
    growth: tuple[int, ...] = (1, 2, 4)


SCALES: dict[str, Scale] = {
    # ~4k rows in the month
    "small": Scale("small", 12, (5, 8), (25, 40), None),
    # ~10x small
    "medium": Scale("medium", 120, (5, 8), (25, 40), None),
    # seed-demo --partners 1000 --companies 20-30 --users 30-50: ~1.6 M rows in the month
    "large": Scale("large", 1000, (20, 30), (30, 50), 50_000),
}


def slice_spec(scale: Scale, index: int) -> DemoSpec:
    """The ``index``-th copy of the scale's partners (0 = the base data set, with the bad
    rows; the others are appended for growth, with their own partners and seed)."""
    return DemoSpec(
        seed=7 + index,
        partners=scale.partners,
        partner_offset=index * scale.partners,
        companies_per_partner=scale.companies_per_partner,
        users_per_company=scale.users_per_company,
        end_month=END_MONTH,
        history_months=HISTORY_MONTHS,
        include_bad_rows=index == 0,
        connected_partners=0,
    )
