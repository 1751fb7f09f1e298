"""The reason codes in words, and pandera models of the frames the database gives back.

The rules themselves live once in ``pipeline.validation.rules`` as SQL the product database
evaluates; here is what each reason code means and how to fix it (``REASONS``), how a
quarantined row is described, and the pandera models that check the two frames that come
back: the quarantined rows (``QuarantinedRow``) and the month's counts (``BillableCount``).
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from pipeline.validation.rules import RULE_CODES

REASONS: dict[str, str] = {
    "partner_missing": "company {company_id} belongs to no partner (partner_id is empty or names "
    "no partner) — assign the company to a partner in the product",
    "company_missing": "the enrollment names no company (company_id is empty) — fix the enrollment",
    "company_name_missing": "company {company_id} has no name, or is not in the companies table — "
    "a Gradient account needs a name; fix the company row",
    "sku_missing": "the enrollment names no service (sku is empty) — fix the enrollment",
    "sku_unknown": "sku {sku!r} is not a service the vendor sells — add it to the services "
    "(SERVICES_SQL) or correct the enrollment",
    "user_missing": "the enrollment names no user (user_id is empty) — fix the enrollment",
    "billable_invalid": "billable is {billable!r}, not true/false — the user {user_id} is missing "
    "from the users table or has no billable flag",
    "active_from_invalid": "active_from {active_from!r} is not a timestamp — store ISO-8601 with a time zone",
    "active_to_invalid": "active_to {active_to!r} is not a timestamp — store ISO-8601 with a time "
    "zone, or null while the user is still active",
    "span_reversed": "the span ends ({active_to}) before it starts ({active_from}) — fix the enrollment's dates",
    "id_padded": "an id has leading or trailing spaces (partner {partner_id!r}, company "
    "{company_id!r}, sku {sku!r}, user {user_id!r}), a look-alike of another id — trim it in the "
    "product",
    "control_characters": "an id or the company name holds control characters (NUL, tab, line "
    "break …) — remove them in the product",
    "value_too_long": "an id or the company name is longer than 255 characters (Gradient does "
    "not document its limits, so the pipeline is strict) — shorten it in the product",
    "value_unreadable": "a text value cannot be read: it is not valid UTF-8, or not text at all "
    "(shown with \\x escapes) — store ids and names as UTF-8 text, or cast them to text in "
    "UTILIZATION_SQL",
}
RULE_NAMES = tuple(REASONS)
if RULE_NAMES != RULE_CODES:  # one vocabulary: the texts follow the rules, in their order
    raise ImportError(f"REASONS {RULE_NAMES} do not match the rules {RULE_CODES}")

QUARANTINE_COLUMNS = (
    "row_number",
    "partner_id",
    "company_id",
    "company_name",
    "sku",
    "user_id",
    "active_from",
    "active_to",
    "billable",
    "reason_codes",
    "reasons",
)


def describe(codes: list[str], raw_row: dict[str, str | None]) -> str:
    """The reasons of one quarantined row, in words a person can act on."""
    values = {k: ("(empty)" if v is None else v) for k, v in raw_row.items()}
    return "; ".join(REASONS[code].format(**values) for code in codes)


def _known_codes(codes: Series[str]) -> Series[bool]:
    return codes.map(lambda text: bool(text) and all(c in REASONS for c in text.split(",")))


class QuarantinedRow(pa.DataFrameModel):
    """A quarantined row as stored: the values as text, its codes and their explanation."""

    row_number: Series[int] = pa.Field(gt=0, unique=True)
    partner_id: Series[object] = pa.Field(nullable=True)
    company_id: Series[object] = pa.Field(nullable=True)
    company_name: Series[object] = pa.Field(nullable=True)
    sku: Series[object] = pa.Field(nullable=True)
    user_id: Series[object] = pa.Field(nullable=True)
    active_from: Series[object] = pa.Field(nullable=True)
    active_to: Series[object] = pa.Field(nullable=True)
    billable: Series[object] = pa.Field(nullable=True)
    reason_codes: Series[str]
    reasons: Series[str] = pa.Field(str_length={"min_value": 1})

    class Config:
        name = "QuarantinedRow"
        strict = True

    @pa.check("reason_codes", name="reason_codes_known")
    def codes_known(cls, codes: Series[str]) -> Series[bool]:
        return _known_codes(codes)


class BillableCount(pa.DataFrameModel):
    """One count of the month: a non-negative number of users per partner x company x sku.
    Text columns are pandas' ``string`` dtype (``COUNT_TEXT_DTYPE``): its values are strings
    by construction, where an ``object`` column would be checked value by value."""

    partner_id: Series[pd.StringDtype] = pa.Field(str_length={"min_value": 1})
    company_id: Series[pd.StringDtype] = pa.Field(str_length={"min_value": 1})
    company_name: Series[pd.StringDtype] = pa.Field(str_length={"min_value": 1})
    sku: Series[pd.StringDtype] = pa.Field(str_length={"min_value": 1})
    billable_users: Series[int] = pa.Field(ge=0)

    class Config:
        name = "BillableCount"
        strict = True
        unique = ["partner_id", "company_id", "sku"]


COUNT_TEXT_DTYPE = pd.StringDtype()
QUARANTINE_SCHEMA = QuarantinedRow.to_schema()
COUNTS_SCHEMA = BillableCount.to_schema()
# pandera registers its pandas backends (importing their checks and strategies) on the first
# validation, 0.2-0.4 s; here that is in the month pass, the first chunk of counts holding up
# the read of the database's answer. Registered with the rest of the imports instead.
COUNTS_SCHEMA.get_backend(check_type=pd.DataFrame)


def checked_quarantine(frame: pd.DataFrame) -> pd.DataFrame:
    return QUARANTINE_SCHEMA.validate(frame, lazy=True)


def checked_counts(frame: pd.DataFrame) -> pd.DataFrame:
    return COUNTS_SCHEMA.validate(frame, lazy=True)
