"""The Dagster layer over the domain logic: assets, their checks, and the disconnect op job.

Thin by design: every rule lives in ``pipeline/``; these modules wire it to Dagster.
"""

import dagster as dg

from assets import gradient_ledger, gradient_load, month_end, partner_lifecycle, specs, statements


def definitions() -> dg.Definitions:
    """The assets and checks of the month-end and Gradient-load groups, and the op job that
    disconnects a partner."""
    return dg.Definitions(
        assets=specs.with_source_links(dg.load_assets_from_modules([month_end, gradient_load, gradient_ledger, statements])),
        asset_checks=dg.load_asset_checks_from_modules([month_end, gradient_load]),
        jobs=[partner_lifecycle.partner_disconnect],
    )
