"""The README's demo: demo data, the local Gradient emulator, three closed months end to end."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import click
import sqlalchemy as sa

from pipeline import settings
from pipeline.demo.data import DemoSpec, DemoSummary, demo_partner_key, load_demo_data
from pipeline.source import product_schema as ps


def reset_embedded_databases() -> None:
    """Point the pipeline at fresh local SQLite files (the demo always starts clean)."""
    os.environ["PRODUCT_DB_URL"] = settings.default_product_db_url()
    os.environ["STATE_DB_URL"] = settings.default_state_db_url()
    for name in ("product.db", "state.db"):
        path = settings.data_dir() / name
        if path.exists():
            path.unlink()


def encryption_keys() -> str:
    return settings.encryption_keys()


def seed(spec: DemoSpec, progress: Callable[[int, int], None] | None = None) -> DemoSummary:
    from pipeline.resources import engine_for

    return load_demo_data(
        engine_for(settings.product_db_url()), spec, encryption_keys=encryption_keys(), progress=progress
    )


def register_demo_partners(admin, engine: sa.Engine) -> list[str]:
    """Register every connected demo partner's key in the emulator and map as partners would.

    All but the last connected partner map everything; the last has only half of its
    companies in its PSA (exact-name auto-map), so some of its counts come back unmapped.
    """
    with engine.connect() as conn:
        partners = dict(conn.execute(sa.select(ps.partners.c.partner_id, ps.partners.c.name)).all())
        connected = (
            conn.execute(
                sa.select(ps.gradient_connections.c.partner_id)
                .where(ps.gradient_connections.c.state == "connected")
                .order_by(ps.gradient_connections.c.partner_id)
            )
            .scalars()
            .all()
        )
        services = conn.execute(sa.select(ps.services.c.name)).scalars().all()
        companies = conn.execute(
            sa.select(ps.companies.c.partner_id, ps.companies.c.name).order_by(ps.companies.c.company_id)
        ).all()
    for index, partner_id in enumerate(connected):
        partial = index == len(connected) - 1 and len(connected) > 1
        admin.register_partner(
            demo_partner_key(partner_id),
            name=partners.get(partner_id, partner_id),
            organization_id=f"org-{partner_id}",
            auto_map_all=not partial,
        )
        if partial:
            own = [name for pid, name in companies if pid == partner_id and name]
            admin.set_psa_companies(f"org-{partner_id}", own[: len(own) // 2])
            admin.set_psa_products(f"org-{partner_id}", list(services))
    return list(connected)


def emulator_totals(admin) -> dict[str, tuple[int, int]]:
    """Per organization: (count values stored, sum of units) as Gradient now shows them."""
    totals: dict[str, tuple[int, int]] = {}
    for row in admin.counts():
        n, units = totals.get(row["organization_id"], (0, 0))
        totals[row["organization_id"]] = (n + 1, units + int(row["unit_count"]))
    return totals


def checkout_on_path() -> None:
    """Make the checkout's own folders importable (gradient_emulator/, bench/, tests/): an editable
    install maps only the product's packages, and a wheel has none of them."""
    root = settings.REPO_ROOT
    if (root / "gradient_emulator").is_dir() and str(root) not in sys.path:
        sys.path.append(str(root))


def require_emulator() -> None:
    """The Gradient emulator ships with the repository, not the wheel (extra ``emulator``)."""
    checkout_on_path()
    try:
        import gradient_emulator  # noqa: F401  (imports starlette and uvicorn, the extra)
    except ModuleNotFoundError as exc:
        raise click.ClickException(
            f"the demo and `emulator` need the local Gradient emulator, which is not installed ({exc}); "
            "install from a checkout of the repository: pip install -e '.[emulator]'"
        ) from None


def run_demo(months: int, echo: Callable[[str], None], run_months: Callable) -> bool:
    require_emulator()
    from gradient_emulator import EmulatorAdmin, EmulatorServer
    from pipeline.resources import engine_for

    reset_embedded_databases()
    echo(f"seeding demo data into {settings.redact_url(settings.product_db_url())} ...")
    summary = seed(DemoSpec())
    echo(
        f"seeded demo data: {summary.partners} partners, {summary.companies} companies, "
        f"{summary.users} users, {summary.enrollments} enrollments ({summary.bad_rows} bad rows)"
    )
    vendor_key = settings.load_settings().vendor_api_key
    with EmulatorServer(vendor_key) as server:
        os.environ["GRADIENT_BASE_URL"] = server.base_url
        os.environ["GRADIENT_VENDOR_API_KEY"] = vendor_key
        with EmulatorAdmin(server.base_url) as admin:
            connected = register_demo_partners(admin, engine_for(settings.product_db_url()))
            echo(f"Gradient emulator at {server.base_url}; connected partners: {', '.join(connected)}")
            echo(f"running the {months} newest closed month(s) end to end; a report per month as it finishes ...")
            ok = run_months(months)
            for org, (pairs, units) in sorted(emulator_totals(admin).items()):
                echo(f"Gradient now shows {org}: {pairs} counts, {units} units in total")
    return ok


def serve_emulator(host: str, port: int, rate_limit: float, demo_partners: bool, echo: Callable[[str], None]) -> None:
    """Serve the Gradient emulator in the foreground; optionally register the demo partners."""
    import threading
    import time

    import httpx

    require_emulator()
    from gradient_emulator import EmulatorAdmin, serve
    from pipeline.resources import engine_for

    vendor_key = settings.load_settings().vendor_api_key
    if demo_partners:

        def register() -> None:
            url = f"http://{host}:{port}"
            for _ in range(100):
                try:
                    httpx.get(f"{url}/_admin/health", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            with EmulatorAdmin(url) as admin:
                names = register_demo_partners(admin, engine_for(settings.product_db_url()))
            echo(f"registered demo partners: {', '.join(names)}")

        threading.Thread(target=register, daemon=True).start()
    serve(host, port, vendor_key, rate_limit_per_second=rate_limit)
