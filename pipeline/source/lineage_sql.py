"""What the configured contract queries read: their tables, and which source columns make each
output column, found by parsing the SQL (sqlglot) rather than by knowing the reference schema.

The code location draws these tables upstream of the assets that run the queries, so a vendor
with its own schema sees its own tables. Parsing never runs the query and never needs a
connection; a query the parser cannot read raises ``UnreadableSQL`` and the caller draws no
tables for it (the pipeline itself runs the query as before).
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.lineage import lineage
from sqlglot.optimizer.scope import traverse_scope

# SQLAlchemy dialect name -> sqlglot dialect (MariaDB speaks MySQL's grammar for these queries).
SQLGLOT_DIALECTS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}

ColumnSources = dict[str, list[tuple[str, str]]]


class UnreadableSQL(ValueError):
    """The SQL parser cannot read a query; the message says which and why."""


def sqlglot_dialect(sqlalchemy_dialect: str) -> str:
    """The sqlglot dialect for a SQLAlchemy dialect name (PostgreSQL's grammar for unknown ones)."""
    name = sqlalchemy_dialect.split("+", 1)[0].lower()
    if name.startswith("postgres"):
        return "postgres"
    return SQLGLOT_DIALECTS.get(name, "postgres")


def _parse(sql: str, dialect: str) -> exp.Expr:
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except SqlglotError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnreadableSQL(f"the {dialect} SQL parser cannot read the query ({first_line})") from None
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        kinds = ", ".join(type(s).__name__.upper() for s in statements) or "nothing"
        raise UnreadableSQL(f"the query is not one SELECT statement (found: {kinds})")
    return statements[0]


def _table_name(table: exp.Table) -> str:
    """schema.table (catalog.schema.table) as written, without quotes or alias."""
    return ".".join(part.name for part in table.parts)


def tables_read(sql: str, dialect: str) -> list[str]:
    """The tables a query reads (joins, subqueries and CTE bodies included; CTE names, which are
    not tables, left out), sorted. ``dialect`` is a sqlglot dialect (``sqlglot_dialect``)."""
    query = _parse(sql, dialect)
    try:
        scopes = traverse_scope(query)
    except SqlglotError as exc:
        raise UnreadableSQL(f"the query's scopes cannot be resolved ({exc})") from None
    names = {
        _table_name(source) for scope in scopes for source in scope.sources.values() if isinstance(source, exp.Table)
    }
    return sorted(names)


def column_lineage(sql: str, dialect: str) -> ColumnSources:
    """For each output column of a query, the (table, column) pairs it is made from, sorted.

    An output column whose sources the parser cannot tell without the schema (an unqualified
    column in a join, ``SELECT *``) maps to the pairs it could tell, possibly none.
    """
    query = _parse(sql, dialect)
    try:
        nodes = lineage(None, query, schema={}, dialect=dialect)
    except SqlglotError as exc:
        raise UnreadableSQL(f"the query's column lineage cannot be resolved ({exc})") from None
    result: ColumnSources = {}
    for column, node in nodes.items():
        if column == "*":
            continue  # SELECT *: the output's columns are not known without the schema
        pairs = {
            (_table_name(leaf.expression), leaf.name.rsplit(".", 1)[-1])
            for leaf in node.walk()
            if not leaf.downstream and isinstance(leaf.expression, exp.Table)
        }
        result[column] = sorted(pairs)
    return result
