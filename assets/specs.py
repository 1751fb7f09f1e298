"""What every asset shows in the Dagster UI besides its logic: owners, tags, column schemas.

``code_version`` is a constant in each asset's decorator: bump it (``"1"`` -> ``"2"``) in the
same commit that changes what the asset computes, so the UI marks the materialized months as
stale (changed code version) and a backfill can bring them up to date. Leave it alone for
refactors that keep every output the same.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import dagster as dg
import sqlalchemy as sa
from dagster_pandera import pandera_schema_to_dagster_type

from pipeline.partitions import monthly_partitions
from pipeline.source.utilization import CONTRACT_COLUMNS, ID_COLUMNS, TIMESTAMP_COLUMNS
from pipeline.store import schema as store
from pipeline.validation.rows import REASONS, BillableCount

OWNERS = ["team:billing-data"]

_CONTRACT_MEANING = {
    "partner_id": "the MSP partner",
    "company_id": "the partner's client; becomes the Gradient account id",
    "company_name": "becomes the Gradient account name",
    "sku": "the vendor service; maps to a Gradient service",
    "user_id": "an end user",
    "active_from": "when the user started using the service in this company",
    "active_to": "when it stopped (exclusive); null while still active",
    "billable": "false for internal, test or free users",
}


def stage_tags(stage: str) -> dict[str, str]:
    """The tags of an asset at ``stage`` of the flow: extract, validate, count, load, ledger, report."""
    return {"domain": "billing", "stage": stage}


def _contract_type(column: str) -> str:
    if column in TIMESTAMP_COLUMNS:
        return "timestamp with time zone"
    return "text" if column in ID_COLUMNS else "boolean"


def utilization_contract_schema(rules: dict[str, str] | None = None) -> dg.TableSchema:
    """The source contract's columns; with ``rules`` (reason code -> text), the row rules too."""
    columns = [
        dg.TableColumn(
            name,
            _contract_type(name),
            description=_CONTRACT_MEANING.get(name),
            constraints=dg.TableColumnConstraints(nullable=name == "active_to"),
        )
        for name in CONTRACT_COLUMNS
    ]
    constraints = dg.TableConstraints(other=[f"{code}: {text}" for code, text in (rules or {}).items()])
    return dg.TableSchema(columns=columns, constraints=constraints)


def table_schema(table: sa.Table) -> dg.TableSchema:
    """The columns of a state-database table."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                column.name,
                str(column.type).lower(),
                constraints=dg.TableColumnConstraints(nullable=bool(column.nullable)),
            )
            for column in table.columns
        ]
    )


def with_source_links(assets: Sequence[dg.AssetsDefinition]) -> Sequence[dg.AssetsDefinition]:
    """The assets, each linked to its source file and line in the UI (a beta API, used on purpose:
    its warning is not repeated on every load of the code location)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.with_source_code_references(assets)


def monthly_check(name: str, asset: str, description: str, *, blocking: bool = False) -> dg.AssetCheckSpec:
    """A check of a monthly asset, evaluated per month: its result belongs to the run's month
    partition, so a month's red stays red until that month is fixed, whatever other months
    run after it. (Partitioned checks are a Dagster preview API, used on purpose: its warning
    is not repeated on every load of the code location.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(
            name, asset=asset, description=description, blocking=blocking, partitions_def=monthly_partitions
        )


def column_schema(schema: dg.TableSchema) -> dict[str, object]:
    """Asset metadata showing ``schema`` as the asset's columns (``dagster/column_schema``)."""
    return {"dagster/column_schema": schema}


UTILIZATION_CONTRACT = utilization_contract_schema()
VALIDATED_UTILIZATION = utilization_contract_schema(REASONS)
with warnings.catch_warnings():  # dagster-pandera's converter is beta; its output is plain metadata
    warnings.simplefilter("ignore", dg.BetaWarning)
    BILLABLE_COUNTS = pandera_schema_to_dagster_type(BillableCount).metadata["schema"].value
GRADIENT_SERVICES = table_schema(store.gradient_services)
LEDGER_ENTRIES = table_schema(store.ledger_entries)
