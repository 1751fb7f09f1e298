"""Row validation with pandera: the ``UtilizationRow`` model.

Each row that cannot be billed is flagged with a reason a person can act on (the check names
are the reason codes). Flagged rows are quarantined, never counted, never dropped silently.
``pipeline.billing.counts.valid_row_sql`` holds the same rules for the database-side count;
the two are reconciled on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from pipeline.source.utilization import CONTRACT_COLUMNS, ID_COLUMNS, SQLITE_MS_PREFIX, TIMESTAMP_COLUMNS

UTC = "UTC"
# The ISO-8601 shapes SQLite's date functions read (and so valid_row_sql accepts): a date,
# optionally a time to minutes/seconds/fractions, optionally "Z" or a "+HH:MM" offset.
ISO_TIMESTAMP = r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:\d{2})?"


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
    "active_from_invalid": "active_from {active_from!r} is not a timestamp — store ISO-8601 with a "
    "time zone",
    "active_to_invalid": "active_to {active_to!r} is not a timestamp — store ISO-8601 with a time "
    "zone, or null while the user is still active",
    "span_reversed": "the span ends ({active_to}) before it starts ({active_from}) — fix the "
    "enrollment's dates",
}


def _is_text(values: pd.Series) -> pd.Series:
    """Element-wise "is a str", with a fast path for columns that hold only text and nulls."""
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        return values.notna()
    return values.map(lambda v: isinstance(v, str))


def _present(values: pd.Series) -> pd.Series:
    """Non-null text that is not blank (SQL: ``x IS NOT NULL AND TRIM(x) <> ''``).

    One plain pass over the objects: pandas' string methods cost several times more here.
    """
    flags = [isinstance(v, str) and v.strip(" ") != "" for v in values.to_numpy(dtype=object)]
    return pd.Series(np.fromiter(flags, dtype=bool, count=len(flags)), index=values.index)


def _as_text(values: pd.Series) -> pd.Series:
    """Ids as text: numbers become their text (as the database's TRIM would read them)."""
    out = values.astype(object)
    mask = out.notna() & ~_is_text(out)
    if mask.any():
        out[mask] = out[mask].map(str)
    return out.where(out.notna(), None)


# pandas timestamps end in 2262: later dates (the common 9999-12-31 "open-ended" sentinel)
# and dates before 1677 are held at these bounds, which compare the same way to any month.
FAR_FUTURE = pd.Timestamp("2262-01-01", tz=UTC)
FAR_PAST = pd.Timestamp("1678-01-01", tz=UTC)


def _real_dates(dates: pd.Series) -> pd.Series:
    """Whether each YYYY-MM-DD is a real calendar date (checked once per distinct value)."""
    def real(text: str) -> bool:
        try:
            date.fromisoformat(text)
        except ValueError:
            return False
        return True

    verdicts = {d: real(d) for d in dates.unique()}
    return dates.map(verdicts).astype(bool)


def _parse_text_timestamps(text: pd.Series) -> pd.Series:
    parsed = pd.Series(pd.NaT, index=text.index, dtype=f"datetime64[ns, {UTC}]")
    well_formed = text.str.fullmatch(ISO_TIMESTAMP).fillna(False).astype(bool)
    well_formed &= _real_dates(text.str.slice(0, 10))
    year = pd.to_numeric(text.str.slice(0, 4), errors="coerce")
    far_future = well_formed & (year >= 2262)
    far_past = well_formed & (year <= 1677)
    in_range = well_formed & ~far_future & ~far_past
    if in_range.any():
        converted = pd.to_datetime(text[in_range], utc=True, format="ISO8601", errors="coerce")
        parsed.loc[in_range] = (converted + pd.Timedelta(microseconds=500)).dt.floor("ms")
    parsed.loc[far_future] = FAR_FUTURE
    parsed.loc[far_past] = FAR_PAST
    return parsed


def _datetime_to_utc(value: datetime) -> pd.Timestamp:
    if value.year >= 2262:
        return FAR_FUTURE
    if value.year <= 1677:
        return FAR_PAST
    stamp = pd.Timestamp(value)
    return stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)


def parse_timestamps(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(UTC timestamps with NaT where absent or unreadable, mask of unreadable non-null values).

    Text must be ISO-8601 with a real calendar date; naive values are read as UTC (as SQLite
    reads them) and rounded half-up to the millisecond, the precision SQLite's date functions
    compare at, so pandera and the database judge every text timestamp alike. Aware
    datetimes from the driver are converted to UTC and keep their precision.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        parsed = values.dt.tz_convert(UTC)
        return parsed, pd.Series(False, index=values.index)
    if pd.api.types.is_datetime64_dtype(values.dtype):
        parsed = values.dt.tz_localize(UTC)
        return parsed, pd.Series(False, index=values.index)
    parsed = pd.Series(pd.NaT, index=values.index, dtype=f"datetime64[ns, {UTC}]")
    present = values.notna()
    is_text = _is_text(values) & present
    if is_text.any():
        parsed.loc[is_text] = _parse_text_timestamps(values[is_text].astype(str))
    others = present & ~is_text
    is_datetime = others & values.map(lambda v: hasattr(v, "tzinfo")) if others.any() else others
    if is_datetime.any():
        parsed.loc[is_datetime] = values[is_datetime].map(_datetime_to_utc)
    unreadable = present & parsed.isna()
    return parsed, unreadable


def timestamps_from_epoch_ms(raw: pd.Series, epoch_ms: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Timestamps as the database read them (epoch ms, NULL = unreadable), held inside
    pandas' range like ``parse_timestamps`` does. Integer datetime casts only: no float
    arithmetic, whose overflow/NaN warnings numpy may be set to raise."""
    ms = pd.to_numeric(epoch_ms, errors="coerce")
    readable = ms.notna().to_numpy()
    low, high = FAR_PAST.value // 1_000_000, FAR_FUTURE.value // 1_000_000
    stamps = np.full(len(ms), np.datetime64("NaT"), dtype="datetime64[ns]")
    whole = np.clip(ms.to_numpy()[readable].astype("int64"), low, high)
    stamps[readable] = whole.astype("datetime64[ms]").astype("datetime64[ns]")
    parsed = pd.Series(pd.DatetimeIndex(stamps).tz_localize(UTC), index=raw.index)
    return parsed, raw.notna() & ~pd.Series(readable, index=raw.index)


def parse_billable(values: pd.Series) -> pd.Series:
    """Nullable boolean: True/False and 1/0 are read; anything else is missing."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.astype("boolean")
    if pd.api.types.is_numeric_dtype(values.dtype):
        readable = values.isin([0, 1])
        return values.where(readable).astype("Float64").astype("boolean")

    def read(v: object) -> object:
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, float, np.integer, np.floating)) and not pd.isna(v) and v in (0, 1):
            return bool(v)
        return pd.NA

    return values.map(read).astype("boolean")


def prepare_chunk(raw: pd.DataFrame, known_skus: frozenset[str]) -> pd.DataFrame:
    """Typed columns for the pandera model, keeping what the source returned readable."""
    frame = pd.DataFrame(index=raw.index)
    for column in ID_COLUMNS:
        frame[column] = _as_text(raw[column])
    for column in TIMESTAMP_COLUMNS:
        judged = SQLITE_MS_PREFIX + column
        if judged in raw.columns:
            parsed, unreadable = timestamps_from_epoch_ms(raw[column], raw[judged])
        else:
            parsed, unreadable = parse_timestamps(raw[column])
        frame[column], frame[f"{column}_unreadable"] = parsed, unreadable
    frame["billable"] = parse_billable(raw["billable"])
    frame["sku_known"] = frame["sku"].isin(known_skus)
    return frame


class UtilizationRow(pa.DataFrameModel):
    """One row of the source contract that can be billed. Check names are reason codes."""

    partner_id: Series[object] = pa.Field(nullable=True)
    company_id: Series[object] = pa.Field(nullable=True)
    company_name: Series[object] = pa.Field(nullable=True)
    sku: Series[object] = pa.Field(nullable=True)
    user_id: Series[object] = pa.Field(nullable=True)
    active_from: Series[pd.DatetimeTZDtype] = pa.Field(nullable=True, dtype_kwargs={"unit": "ns", "tz": UTC})
    active_to: Series[pd.DatetimeTZDtype] = pa.Field(nullable=True, dtype_kwargs={"unit": "ns", "tz": UTC})
    billable: Series[pd.BooleanDtype] = pa.Field(nullable=True)
    active_from_unreadable: Series[bool]
    active_to_unreadable: Series[bool]
    sku_known: Series[bool]

    class Config:
        name = "UtilizationRow"
        strict = True

    @pa.dataframe_check(name="partner_missing")
    def partner_present(cls, df: pd.DataFrame) -> Series[bool]:
        return _present(df["partner_id"])

    @pa.dataframe_check(name="company_missing")
    def company_present(cls, df: pd.DataFrame) -> Series[bool]:
        return _present(df["company_id"])

    @pa.dataframe_check(name="company_name_missing")
    def company_name_present(cls, df: pd.DataFrame) -> Series[bool]:
        return _present(df["company_name"])

    @pa.dataframe_check(name="sku_missing")
    def sku_present(cls, df: pd.DataFrame) -> Series[bool]:
        return _present(df["sku"])

    @pa.dataframe_check(name="sku_unknown")
    def sku_known_service(cls, df: pd.DataFrame) -> Series[bool]:
        return df["sku_known"] | ~_present(df["sku"])

    @pa.dataframe_check(name="user_missing")
    def user_present(cls, df: pd.DataFrame) -> Series[bool]:
        return _present(df["user_id"])

    @pa.dataframe_check(name="billable_invalid")
    def billable_known(cls, df: pd.DataFrame) -> Series[bool]:
        return df["billable"].notna().astype(bool)

    @pa.dataframe_check(name="active_from_invalid")
    def active_from_readable(cls, df: pd.DataFrame) -> Series[bool]:
        return df["active_from"].notna()

    @pa.dataframe_check(name="active_to_invalid")
    def active_to_readable(cls, df: pd.DataFrame) -> Series[bool]:
        return ~df["active_to_unreadable"]

    @pa.dataframe_check(name="span_reversed")
    def span_in_order(cls, df: pd.DataFrame) -> Series[bool]:
        both = df["active_from"].notna() & df["active_to"].notna()
        return ~both | (df["active_to"] >= df["active_from"])


UTILIZATION_SCHEMA = UtilizationRow.to_schema()
RULE_NAMES = tuple(REASONS)


def _display(value: object) -> object:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value if isinstance(value, str) else str(value)


def describe(codes: list[str], raw_row: dict[str, object]) -> str:
    """The reasons of one quarantined row, in words a person can act on."""
    values = {k: ("(empty)" if (v := _display(raw)) is None else v) for k, raw in raw_row.items()}
    return "; ".join(REASONS[code].format(**values) for code in codes)


@dataclass
class ChunkValidation:
    rows: int
    valid_rows: int
    quarantined: pd.DataFrame  # raw contract columns as text + row_number, reason_codes, reasons
    reason_counts: dict[str, int] = field(default_factory=dict)


def validate_chunk(raw: pd.DataFrame, known_skus: frozenset[str], first_row_number: int) -> ChunkValidation:
    """Validate one chunk of contract rows; row numbers continue across chunks."""
    raw = raw.reset_index(drop=True)
    prepared = prepare_chunk(raw, known_skus)
    codes_by_row: dict[int, list[str]] = {}
    try:
        UTILIZATION_SCHEMA.validate(prepared, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
        structural = cases[cases["index"].isna()]
        if len(structural):
            raise ValueError(
                "the prepared utilization frame does not match the UtilizationRow model: "
                + "; ".join(f"{r.column}: {r.check}" for r in structural.itertuples())
            ) from None
        for case in cases.itertuples():
            codes_by_row.setdefault(int(case.index), []).append(str(case.check))
    bad_index = sorted(codes_by_row)
    quarantined = _quarantine_frame(raw, bad_index, codes_by_row, first_row_number)
    reason_counts: dict[str, int] = {}
    for codes in codes_by_row.values():
        for code in dict.fromkeys(codes):
            reason_counts[code] = reason_counts.get(code, 0) + 1
    return ChunkValidation(
        rows=len(raw),
        valid_rows=len(raw) - len(bad_index),
        quarantined=quarantined,
        reason_counts=reason_counts,
    )


def _quarantine_frame(
    raw: pd.DataFrame, bad_index: list[int], codes_by_row: dict[int, list[str]], first_row_number: int
) -> pd.DataFrame:
    records = []
    for index in bad_index:
        raw_row = {c: raw.at[index, c] for c in CONTRACT_COLUMNS}
        codes = sorted(dict.fromkeys(codes_by_row[index]), key=RULE_NAMES.index)
        record = {c: _display(v) for c, v in raw_row.items()}
        record.update(
            row_number=first_row_number + index,
            reason_codes=",".join(codes),
            reasons=describe(codes, raw_row),
        )
        records.append(record)
    columns = ["row_number", *CONTRACT_COLUMNS, "reason_codes", "reasons"]
    return pd.DataFrame.from_records(records, columns=columns)
