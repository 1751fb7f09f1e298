"""``gradient-billing-sync rotate``: re-encrypt the partners' stored API keys under the newest
key in GRADIENT_KEY_ENCRYPTION_KEYS, as a file for the product to apply.

Why a file and not an UPDATE: the stored keys live in the product's ``gradient_connections``,
and the pipeline only reads the product database (its queries are the vendor's, CONNECTIONS_SQL,
and may not even name a table it could write). So ``rotate`` reads the stored keys as a run
does, re-encrypts each one an older key opens, and writes what the product must store: SQL
UPDATEs for the reference schema (each applies only while the stored value is still the one
read, so a key a partner pasted meanwhile is never overwritten) or, for a vendor's own schema,
a CSV of partner_id and the new value. Once applied, ``check-config`` shows every key opening
with the newest key and the older keys can be removed.
"""

from __future__ import annotations

import os
from pathlib import Path

import click


@click.command("rotate")
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write (created with mode 600; an existing file is not overwritten).",
)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["sql", "csv"]),
    default=None,
    help="sql: UPDATEs of the reference schema's gradient_connections for the product "
    "database's dialect; csv: partner_id,encrypted_api_key for a vendor's own schema. "
    "Default: sql unless CONNECTIONS_SQL is set.",
)
def rotate(out_path: Path, file_format: str | None) -> None:
    """Re-encrypt every stored partner key that an older key in GRADIENT_KEY_ENCRYPTION_KEYS
    opens under the newest (first) one, into a file for the product to apply (the pipeline
    never writes the product database). Exit status 1 when a connected partner's key opens
    with none of the keys."""
    from pipeline import settings
    from pipeline.cli.runs import product_database
    from pipeline.cli.tables import cell
    from pipeline.gradient.partner_keys import PartnerKeyError, key_diagnosis
    from pipeline.gradient.partner_keys import rotate as reencrypt
    from pipeline.source.partners import load_connections

    config = settings.load_settings()
    file_format = file_format or ("csv" if config.connections_sql else "sql")
    with product_database().connect() as conn:
        dialect = conn.dialect
        connections = [c for c in load_connections(conn, config.connections_sql) if c.encrypted_api_key]
    keys = config.encryption_keys
    try:
        diagnosis = {
            k.partner_id: k for k in key_diagnosis([(c.partner_id, c.encrypted_api_key) for c in connections], keys)
        }
    except PartnerKeyError as exc:
        raise click.ClickException(str(exc)) from None
    older = [c for c in connections if (diagnosis[c.partner_id].opened_by or 1) > 1]
    unopened = [c for c in connections if diagnosis[c.partner_id].opened_by is None]
    if older:
        rotated = [(c, reencrypt(c.encrypted_api_key or "", keys)) for c in older]
        _write_private(out_path, _sql(rotated, dialect) if file_format == "sql" else _csv(rotated))
        click.echo(
            f"wrote {len(rotated)} re-encrypted partner keys to {out_path} ({file_format}); "
            "the product stores them: apply the file to the product database (the pipeline only "
            "reads it). Then `gradient-billing-sync check-config` shows every key opening with "
            "the newest, and the older keys can be removed from GRADIENT_KEY_ENCRYPTION_KEYS."
        )
    else:
        click.echo("every stored partner key opens with the newest key already; nothing to write")
    connected = [c for c in unopened if c.is_connected]
    for c in unopened:
        click.echo(f"  partner {cell(c.partner_id)} ({c.state}): its stored key opens with no configured key")
    if connected:
        from pipeline.gradient.partner_keys import UNDECRYPTABLE_FIX

        raise click.ClickException(
            f"{len(connected)} connected partners' stored keys cannot be re-encrypted: {UNDECRYPTABLE_FIX}"
        )


def _sql(rotated, dialect) -> str:
    """One UPDATE per partner, compiled by SQLAlchemy for the product's dialect (values quoted
    by the dialect, never by hand: ids are product data)."""
    import sqlalchemy as sa

    from pipeline.source import product_schema as ps

    table = ps.gradient_connections
    lines = [
        "-- gradient-billing-sync rotate: stored partner keys re-encrypted under the newest key.",
        "-- Each UPDATE applies only while the stored value is still the one rotate read.",
    ]
    for connection, new_value in rotated:
        statement = (
            sa.update(table)
            .where(
                table.c.partner_id == connection.partner_id, table.c.encrypted_api_key == connection.encrypted_api_key
            )
            .values(encrypted_api_key=new_value)
        )
        lines.append(f"{statement.compile(dialect=dialect, compile_kwargs={'literal_binds': True})};")
    return "\n".join(lines) + "\n"


def _csv(rotated) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["partner_id", "encrypted_api_key", "previous_encrypted_api_key"])
    for connection, new_value in rotated:
        writer.writerow([connection.partner_id, new_value, connection.encrypted_api_key])
    return buffer.getvalue()


def _write_private(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{path} exists; give a new --out file (rotate never overwrites one)") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
