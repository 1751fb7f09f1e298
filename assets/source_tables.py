"""The vendor's product-database tables in the asset graph, upstream of the assets that read them.

The tables are not known in advance: they are what the configured contract queries
(UTILIZATION_SQL, SERVICES_SQL, CONNECTIONS_SQL, COMPANIES_SQL, or the reference schema's
queries when unset) read, found by parsing each query (``pipeline.source.lineage_sql``). Each
table is an external asset (an ``AssetSpec``: Dagster draws it, never materializes it) in the
``product_database`` group; the assets that run a query get its tables as deps, and the extract
and the counts get column lineage (``dagster/column_lineage``) from the source columns.

A query the parser cannot read draws no tables (a warning says which and why); the code
location loads all the same and the pipeline runs the query as before.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import dagster as dg
from sqlalchemy.engine import make_url

from assets import specs
from pipeline.settings import Settings, load_settings, reference_sql
from pipeline.source.lineage_sql import column_lineage, sqlglot_dialect, tables_read
from pipeline.source.utilization import CONTRACT_COLUMNS, SourceQuery

GROUP = "product_database"
KEY_PREFIX = "product_database"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContractQuery:
    """A setting naming a contract query, its reference file and the assets that run it."""

    setting: str
    reference_file: str
    read_by: tuple[str, ...]


CONTRACT_QUERIES = (
    ContractQuery("UTILIZATION_SQL", "utilization.sql", ("utilization_extract",)),
    ContractQuery("SERVICES_SQL", "services.sql", ("validated_utilization", "gradient_services")),
    ContractQuery(
        "CONNECTIONS_SQL", "connections.sql", ("gradient_services", "gradient_accounts", "gradient_unit_counts")
    ),
    ContractQuery("COMPANIES_SQL", "companies.sql", ("gradient_accounts", "gradient_unit_counts")),
)
# The columns of billable_counts and the contract columns each is made from.
COUNT_COLUMNS_FROM = {
    "partner_id": ("partner_id",),
    "company_id": ("company_id",),
    "sku": ("sku",),
    "billable_users": ("user_id", "billable", "active_from", "active_to"),
}


def table_key(table: str) -> dg.AssetKey:
    """The asset key of a product-database table: ``product_database/<schema>/<table>``."""
    return dg.AssetKey([KEY_PREFIX, *table.split(".")])


@dataclass
class SourceLineage:
    """What the configured queries read: one spec per table, the tables each asset reads and
    the source columns of each contract column."""

    dialect: str  # sqlglot's
    kind: str  # the database the UI names: postgres, mysql, mariadb, sqlite
    tables: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # table -> setting -> columns
    deps: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # asset -> tables
    contract_sources: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    unreadable: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # asset -> why

    def specs(self) -> list[dg.AssetSpec]:
        return [
            dg.AssetSpec(
                table_key(table),
                group_name=GROUP,
                kinds={self.kind},
                owners=specs.OWNERS,
                tags=specs.stage_tags("source"),
                # never materialized: a constant, like every asset's, so the UI shows no code change
                code_version="1",
                description=(
                    f"Table {table} of the vendor's product database, read (never written) by "
                    f"{', '.join(sorted(by_setting))}. Drawn from the configured queries; "
                    "Dagster does not materialize it."
                ),
                metadata={
                    "dagster/table_name": table,
                    "read_by": ", ".join(sorted(by_setting)),
                    "dagster/column_schema": dg.TableSchema(
                        columns=[
                            dg.TableColumn(
                                column,
                                "unknown",
                                description="feeds the output of "
                                + ", ".join(sorted(s for s, columns in by_setting.items() if column in columns)),
                            )
                            for column in sorted(set().union(*by_setting.values()))
                        ]
                    ),
                },
            )
            for table, by_setting in sorted(self.tables.items())
        ]

    def extract_column_lineage(self) -> dg.TableColumnLineage:
        """utilization_extract's contract columns <- the source tables' columns."""
        return dg.TableColumnLineage(
            deps_by_column={
                column: [dg.TableColumnDep(table_key(t), c) for t, c in sources]
                for column, sources in self.contract_sources.items()
                if column in CONTRACT_COLUMNS and sources
            }
        )

    def counts_column_lineage(self) -> dg.TableColumnLineage:
        """billable_counts' columns <- the validated contract columns and their source columns."""
        deps_by_column = {}
        for column, contract_columns in COUNT_COLUMNS_FROM.items():
            deps = [dg.TableColumnDep(dg.AssetKey("validated_utilization"), c) for c in contract_columns]
            sources = sorted({s for c in contract_columns for s in self.contract_sources.get(c, [])})
            deps += [dg.TableColumnDep(table_key(t), c) for t, c in sources]
            deps_by_column[column] = deps
        return dg.TableColumnLineage(deps_by_column=deps_by_column)


def _configured_path(config: Settings, query: ContractQuery) -> str | None:
    return getattr(config, query.setting.lower())


def source_lineage(config: Settings) -> SourceLineage:
    """Parse each configured contract query (the reference one when unset) for its tables and
    columns; a query that cannot be read or parsed is left out with a warning."""
    backend = make_url(config.product_db).get_backend_name()
    kind = "postgres" if backend.startswith("postgres") else backend
    found = SourceLineage(dialect=sqlglot_dialect(backend), kind=kind)
    for query in CONTRACT_QUERIES:
        path = _configured_path(config, query) or reference_sql(backend, query.reference_file)
        try:
            sql = SourceQuery.load(path).sql
            tables = tables_read(sql, found.dialect)
            columns = column_lineage(sql, found.dialect)
        except Exception as exc:
            for asset in query.read_by:
                found.unreadable[asset].append(f"{query.setting}: {exc}")
            log.warning(
                "%s (%s): %s. Its tables are not drawn upstream of %s; the pipeline runs the query "
                "all the same. To see them in the graph, write it as one SELECT statement that "
                "sqlglot's %s dialect reads.",
                query.setting,
                path,
                exc,
                ", ".join(query.read_by),
                found.dialect,
            )
            continue
        for table in tables:
            found.tables.setdefault(table, {}).setdefault(query.setting, set())
        for sources in columns.values():
            for table, column in sources:
                found.tables.setdefault(table, {}).setdefault(query.setting, set()).add(column)
        for asset in query.read_by:
            found.deps[asset].update(tables)
        if query.setting == "UTILIZATION_SQL":
            found.contract_sources = columns
    return found


def _with_lineage(spec: dg.AssetSpec, found: SourceLineage) -> dg.AssetSpec:
    name = spec.key.to_user_string()
    tables = sorted(found.deps.get(name, ()))
    metadata: dict[str, object] = {}
    if name == "utilization_extract" and found.contract_sources:
        metadata["dagster/column_lineage"] = found.extract_column_lineage()
    if name == "billable_counts":
        metadata["dagster/column_lineage"] = found.counts_column_lineage()
    if found.unreadable.get(name):
        metadata["source_tables_not_drawn"] = "; ".join(found.unreadable[name])
    if not tables and not metadata:
        return spec
    return spec.merge_attributes(deps=[table_key(t) for t in tables], metadata=metadata)


def with_source_tables(defs: dg.Definitions, config: Settings | None = None) -> dg.Definitions:
    """``defs`` with the product database's tables drawn upstream of the assets that read them."""
    found = source_lineage(config or load_settings())
    drawn = dg.Definitions.merge(defs, dg.Definitions(assets=found.specs()))
    with warnings.catch_warnings():  # a preview API, used on purpose: no warning on every load
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return drawn.map_asset_specs(func=lambda spec: _with_lineage(spec, found))


def tables_upstream(defs: dg.Definitions, asset: str) -> Sequence[str]:
    """The product-database tables drawn upstream of ``asset`` (the tests ask)."""
    node = defs.resolve_asset_graph().get(dg.AssetKey(asset))
    return sorted(".".join(k.path[1:]) for k in node.parent_keys if k.path[0] == KEY_PREFIX)
