"""Partner disconnection: an op job (it changes no asset), run by the disconnect sensor."""

import asyncio

import dagster as dg

from pipeline.gradient.errors import GradientError
from pipeline.gradient.load import disconnect_partner
from pipeline.gradient.partner_keys import PartnerKeyError
from pipeline.resources import GradientResource, PartnerSources, ProductDatabase, StateDatabase
from pipeline.source.partners import load_connections


class PartnerDisconnectConfig(dg.Config):
    partner_id: str


@dg.op(tags={"kind": "gradient"}, pool="gradient_api")
def disconnect_gradient_partner(
    context: dg.OpExecutionContext,
    config: PartnerDisconnectConfig,
    product_db: ProductDatabase,
    partner_sources: PartnerSources,
    state_db: StateDatabase,
    gradient: GradientResource,
) -> str:
    """Set the partner's integration inactive, stop syncing it, reset its delivered state."""
    with product_db.connect() as conn:
        connections = {c.partner_id: c for c in load_connections(conn, partner_sources.connections_sql)}
    connection = connections.get(config.partner_id)
    if connection is None:
        raise dg.Failure(f"partner {config.partner_id} has no Gradient connection in the product")
    if connection.is_connected:
        context.log.warning(f"{config.partner_id} is connected again; nothing to disconnect")
        return "connected again"
    api_key = None
    if connection.encrypted_api_key:
        try:
            api_key = partner_sources.decrypt(connection)
        except PartnerKeyError as exc:
            context.log.warning(str(exc))

    async def run() -> str:
        async with gradient.client() as client:
            return await disconnect_partner(
                client, connection, api_key, state_db.engine(), context.run_id, log=context.log.info
            )

    try:
        return asyncio.run(run())
    except GradientError as exc:
        raise dg.Failure(description=f"{config.partner_id}: {exc}") from None


@dg.job(description="Disconnect a partner from Gradient (run by partner_disconnected_sensor).")
def partner_disconnect():
    disconnect_gradient_partner()
