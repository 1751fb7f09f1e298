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


def table_value(frame: pd.DataFrame, max_rows: int = 200, descriptions: Mapping[str, str] | None = None) -> dg.MetadataValue:
    """A frame as a Dagster table (first ``max_rows`` rows) with a typed schema."""
    descriptions = descriptions or {}
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(str(name), _column_type(frame[name]), description=descriptions.get(str(name)))
            for name in frame.columns
        ]
    )
    records = [
        dg.TableRecord({str(k): _cell(v) for k, v in row.items()})
        for row in frame.head(max_rows).to_dict("records")
    ]
    return dg.MetadataValue.table(records=records, schema=schema)
