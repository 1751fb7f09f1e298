"""The code location: one ``Definitions`` object, ``defs``, merged from each Dagster folder.

``assets`` contributes the assets, checks and the disconnect job; ``pipeline.automation`` the
jobs, schedule and sensors; ``pipeline.resources`` the resources, configured from the
environment. Every run executes in one process (``in_process_executor``): the steps of a month
run one after another anyway, and a process per step cost more than the database's own work.
"""

from __future__ import annotations

import dagster as dg

import assets
from pipeline.automation import definitions as automation
from pipeline.resources import default_resources


def build_defs() -> dg.Definitions:
    """The code location's definitions, with resources configured from the current environment."""
    return dg.Definitions.merge(
        assets.definitions(),
        automation.definitions(),
        dg.Definitions(resources=default_resources(), executor=dg.in_process_executor),
    )


defs = build_defs()
