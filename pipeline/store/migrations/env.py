"""Alembic's migration environment for the state database.

Run through ``pipeline.store.migrations`` (no alembic.ini): the caller passes an open
connection and the models (``pipeline.store.schema.metadata``) in ``config.attributes``, so
this package never imports the models it migrates.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
metadata = context.config.attributes.get("target_metadata")
if connection is None or metadata is None:
    raise RuntimeError(
        "the state-database migrations run through pipeline.store.migrations "
        "(`gradient-billing-sync db upgrade`), which passes the connection"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    # batch mode lets ALTERs of later revisions work on SQLite too (table copy-and-move)
    render_as_batch=True,
    compare_type=True,
)

with context.begin_transaction():
    context.run_migrations()
