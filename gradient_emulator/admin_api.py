"""Admin API (``/_admin``, no token): drives the emulator from tests and the demo.

Nothing here ever returns a partner key or a token; partners are named by organization id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .catalog import ADMIN_PREFIX
from .errors import BadRequest, EmulatorError
from .faults import parse_fault_config
from .state import EmulatorState
from .validation import optional_string, read_json, require_object, require_string, string_list

Endpoint = Callable[[Request], Awaitable[Response]]


def _guarded(handler: Endpoint) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except EmulatorError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)

    return endpoint


class AdminApi:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def routes(self) -> list[Route]:
        a = ADMIN_PREFIX
        org = f"{a}/partners/{{organization_id}}"
        table: list[tuple[str, Endpoint, str]] = [
            (f"{a}/health", self.health, "GET"),
            (f"{a}/partners", self.register_partner, "POST"),
            (f"{org}/revoke", self.revoke_partner, "POST"),
            (f"{org}/status", self.set_status, "PUT"),
            (f"{org}/delete-account", self.delete_account, "POST"),
            (f"{org}/psa-companies", self.set_psa_companies, "PUT"),
            (f"{org}/psa-products", self.set_psa_products, "PUT"),
            (f"{org}/account-mappings/{{account_id:path}}", self.map_account, "POST"),
            (f"{org}/account-mappings/{{account_id:path}}", self.unmap_account, "DELETE"),
            (f"{org}/service-mappings/{{service_id}}", self.map_service, "POST"),
            (f"{org}/service-mappings/{{service_id}}", self.unmap_service, "DELETE"),
            (f"{a}/state", self.snapshot, "GET"),
            (f"{a}/counts", self.counts, "GET"),
            (f"{a}/requests", self.requests, "GET"),
            (f"{a}/requests", self.clear_requests, "DELETE"),
            (f"{a}/faults", self.get_faults, "GET"),
            (f"{a}/faults", self.set_faults, "PUT"),
            (f"{a}/faults", self.clear_faults, "DELETE"),
            (f"{a}/reset", self.reset, "POST"),
        ]
        return [Route(path, _guarded(handler), methods=[method]) for path, handler, method in table]

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def register_partner(self, request: Request) -> Response:
        body = require_object(await read_json(request))
        auto_map_all = body.get("auto_map_all")
        if auto_map_all is not None and not isinstance(auto_map_all, bool):
            raise BadRequest("auto_map_all must be a boolean")
        partner = self.state.register_partner(
            require_string(body, "partner_key"),
            optional_string(body, "name"),
            organization_id=optional_string(body, "organization_id"),
            auto_map_all=auto_map_all,
            status=optional_string(body, "status"),
        )
        return JSONResponse(partner, status_code=201)

    async def revoke_partner(self, request: Request) -> Response:
        return JSONResponse(self.state.revoke_partner(request.path_params["organization_id"]))

    async def set_status(self, request: Request) -> Response:
        """Set the integration's status as Gradient (or the partner there) would: ``inactive``
        drops the organization's accounts, mappings and counts."""
        status = require_string(require_object(await read_json(request)), "status")
        return JSONResponse(self.state.set_status(request.path_params["organization_id"], status))

    async def delete_account(self, request: Request) -> Response:
        """The account id comes in the body: any id (CR/LF included) can be named there."""
        account_id = require_string(require_object(await read_json(request)), "account_id")
        return JSONResponse(self.state.delete_account(request.path_params["organization_id"], account_id))

    async def set_psa_companies(self, request: Request) -> Response:
        names = string_list(await read_json(request), "psa companies")
        companies = self.state.set_psa_companies(request.path_params["organization_id"], names)
        return JSONResponse(companies)

    async def set_psa_products(self, request: Request) -> Response:
        names = string_list(await read_json(request), "psa products")
        products = self.state.set_psa_products(request.path_params["organization_id"], names)
        return JSONResponse(products)

    async def map_account(self, request: Request) -> Response:
        return self._account_mapping(request, mapped=True)

    async def unmap_account(self, request: Request) -> Response:
        return self._account_mapping(request, mapped=False)

    def _account_mapping(self, request: Request, *, mapped: bool) -> Response:
        org, account_id = request.path_params["organization_id"], request.path_params["account_id"]
        self.state.map_account(org, account_id, mapped)
        return JSONResponse({"organization_id": org, "account_id": account_id, "mapped": mapped})

    async def map_service(self, request: Request) -> Response:
        return self._service_mapping(request, mapped=True)

    async def unmap_service(self, request: Request) -> Response:
        return self._service_mapping(request, mapped=False)

    def _service_mapping(self, request: Request, *, mapped: bool) -> Response:
        org, service_id = request.path_params["organization_id"], request.path_params["service_id"]
        self.state.map_service(org, service_id, mapped)
        return JSONResponse({"organization_id": org, "service_id": service_id, "mapped": mapped})

    async def snapshot(self, request: Request) -> Response:
        return JSONResponse(self.state.snapshot())

    async def counts(self, request: Request) -> Response:
        return JSONResponse(self.state.counts_report())

    async def requests(self, request: Request) -> Response:
        return JSONResponse(self.state.requests.entries())

    async def clear_requests(self, request: Request) -> Response:
        self.state.requests.clear()
        return JSONResponse({"cleared": True})

    async def get_faults(self, request: Request) -> Response:
        return JSONResponse(self.state.describe_faults())

    async def set_faults(self, request: Request) -> Response:
        config = parse_fault_config(await read_json(request))
        return JSONResponse(self.state.set_faults(config))

    async def clear_faults(self, request: Request) -> Response:
        return JSONResponse(self.state.clear_faults())

    async def reset(self, request: Request) -> Response:
        self.state.reset()
        return JSONResponse({"reset": True})
