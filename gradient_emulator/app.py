"""The Starlette application: vendor API + admin API behind the vendor gateway middleware."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .admin_api import AdminApi
from .errors import error_body
from .gateway import VendorGateway
from .state import EmulatorState
from .vendor_api import VendorApi


async def _route_not_found(request: Request, exc: Exception) -> Response:
    """Unknown route or method: NestJS answers 404 ``Cannot <METHOD> <path>`` for both."""
    return JSONResponse(error_body(404, f"Cannot {request.method} {request.url.path}"), status_code=404)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    return JSONResponse(error_body(status, str(getattr(exc, "detail", "")) or "Error"), status_code=status)


async def _server_error(request: Request, exc: Exception) -> Response:
    return JSONResponse(error_body(500, "Internal server error"), status_code=500)


def create_app(
    vendor_api_key: str, *, state: EmulatorState | None = None, rate_limit_per_second: int = 100
) -> Starlette:
    """Build the emulator for one vendor key. ``rate_limit_per_second`` becomes the state's
    default vendor-wide limit (a fault setting can override it until faults are cleared)."""
    state = state if state is not None else EmulatorState()
    state.set_vendor_key(vendor_api_key)
    state.set_default_rate_limit(rate_limit_per_second)
    app = Starlette(
        routes=[*VendorApi(state).routes(), *AdminApi(state).routes()],
        middleware=[Middleware(VendorGateway, state=state)],
        exception_handlers={
            404: _route_not_found,
            405: _route_not_found,
            HTTPException: _http_error,
            Exception: _server_error,
        },
    )
    app.state.emulator = state
    return app
