"""The Dagster layer over the domain logic: assets, their checks, the disconnect and preview op jobs.

Thin by design: every rule lives in ``pipeline/``; these modules wire it to Dagster.
"""

import dagster as dg

from assets import gradient_load, load_preview, month_end, partner_lifecycle, specs, statements


def definitions() -> dg.Definitions:
    """The assets and checks of the month-end and Gradient-load groups, the op job that
    disconnects a partner and the op job that previews a month's push (it materializes nothing)."""
    return dg.Definitions(
        assets=specs.with_source_links(dg.load_assets_from_modules([month_end, gradient_load, statements])),
        asset_checks=dg.load_asset_checks_from_modules([month_end, gradient_load]),
        jobs=[partner_lifecycle.partner_disconnect, load_preview.gradient_preview],
    )
