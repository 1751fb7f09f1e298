"""The code location: one ``Definitions`` object, ``defs``, merged from each Dagster folder.

``assets`` contributes the assets, checks and the disconnect job; ``pipeline.automation`` the
jobs, schedule and sensors; ``pipeline.resources`` the resources, configured from the
environment. Every run executes in one process (``in_process_executor``): the steps of a month
run one after another anyway, and a process per step cost more than the database's own work.
"""

from __future__ import annotations

import dagster as dg

import assets
from assets.explain_count import explain_count
from assets.source_tables import with_source_tables
from pipeline.automation import definitions as automation
from pipeline.resources import default_resources


def build_defs() -> dg.Definitions:
    """The code location's definitions, with resources configured from the current environment,
    and the product database's tables (parsed from the configured queries) upstream of the
    assets that read them."""
    return with_source_tables(
        dg.Definitions.merge(
            assets.definitions(),
            automation.definitions(),
            dg.Definitions(resources=default_resources(), executor=dg.in_process_executor),
            dg.Definitions(jobs=[explain_count]),
        )
    )


defs = build_defs()
