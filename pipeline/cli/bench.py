"""``gradient-billing-sync bench``: the month-end benchmark (the measuring code is in ``bench/``)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("bench")
@click.option(
    "--scale",
    type=click.Choice(["small", "medium", "large"]),
    default="small",
    show_default=True,
    help="small ~3k rows in the month, medium ~10x, large ~1.6 M (1000 partners).",
)
@click.option(
    "--product-db",
    default=None,
    metavar="URL",
    help="Product database to seed and measure (its reference schema is recreated). "
    "Default: database gbs_bench on PostgreSQL 127.0.0.1:5432, created when missing.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the figures as JSON (default var/bench/<scale>/bench-<scale>.json).",
)
@click.option(
    "--load-calls",
    type=click.IntRange(min=1),
    default=None,
    help="Count calls the load aims for (partners are connected until their counts "
    "reach it). Default: 50,000 at large, every partner below.",
)
def bench(scale: str, product_db: str | None, json_path: Path | None, load_calls: int | None) -> None:
    """Seed a scale of demo data, then measure one month: the bare database aggregate, naive
    pandas, the month-end assets as Dagster runs them, the load against the Gradient emulator,
    the unchanged re-run and growth at 1x/2x/4x. Prints a table and writes JSON."""
    from pipeline.demo.run import checkout_on_path

    checkout_on_path()
    try:
        from bench.run import run_bench
    except ModuleNotFoundError as exc:
        raise click.ClickException(
            f"the bench package is not importable ({exc}); reinstall the project "
            "(pip install -e '.[dev]') or run from the repository root."
        ) from None
    run_bench(scale, product_db, json_path=json_path, echo=click.echo, load_calls=load_calls)
