"""Metadata values with their Dagster types: frames as tables with a typed schema."""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg
import pandas as pd


def _column_type(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    return "string"


def _cell(value: object) -> str | int | float | bool | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def table_value(
    frame: pd.DataFrame, max_rows: int = 200, descriptions: Mapping[str, str] | None = None
) -> dg.MetadataValue:
    """A frame as a Dagster table (first ``max_rows`` rows) with a typed schema."""
    descriptions = descriptions or {}
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(str(name), _column_type(frame[name]), description=descriptions.get(str(name)))
            for name in frame.columns
        ]
    )
    records = [
        dg.TableRecord({str(k): _cell(v) for k, v in row.items()}) for row in frame.head(max_rows).to_dict("records")
    ]
    return dg.MetadataValue.table(records=records, schema=schema)


#: Rows a per-partner (or per-entry) table shows in any event: the UI's event log and the
#: asset pages stay the same size at 10 partners and at 10,000.
SHOWN_ROWS = 50


def most_important(frame: pd.DataFrame, rank: pd.Series, limit: int = SHOWN_ROWS) -> pd.DataFrame:
    """The ``limit`` rows of ``frame`` with the lowest ``rank`` (0 = most important: failures,
    then unmapped, then superseded), in rank then original order."""
    order = frame.assign(_rank=rank.to_numpy(), _pos=range(len(frame))).sort_values(["_rank", "_pos"], kind="stable")
    return order.head(limit).drop(columns=["_rank", "_pos"]).reset_index(drop=True)


#: How much a row of a per-partner table matters to the person reading it: what needs a fix
#: first (failed, partial), then what bills less than it should (unmapped), then what was held
#: back (superseded); plain deliveries last.
STATUS_RANK = {"failed": 0, "partial": 1, "delivered_with_unmapped": 2, "superseded": 3, "delivered": 4}


def status_rank(statuses: pd.Series) -> pd.Series:
    return statuses.map(lambda s: STATUS_RANK.get(str(s), 0))
