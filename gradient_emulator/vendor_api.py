"""Routes of the emulated Gradient vendor API (``/api/vendor-api``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .catalog import API_PREFIX, TOKEN_HEADER
from .errors import BadRequest, EmulatorError
from .state import Account, EmulatorState
from .validation import is_number, optional_string, read_json, require_object, require_string

PartnerHandler = Callable[[Request, str], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]

_VENDOR_FIELDS = ("name", "description", "vendorSupportPageUrl", "integrationPortalUrl")
_ACCOUNT_FIELDS = ("id", "name", "description")


def _wrapped(data: Any, message: str, status: int = 200) -> JSONResponse:
    return JSONResponse({"status": status, "data": data, "message": message}, status_code=status)


class VendorApi:
    """The documented endpoints; every one needs a valid partner token."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def routes(self) -> list[Route]:
        p = API_PREFIX
        g = self._guarded
        return [
            Route(p, g(self.get_vendor), methods=["GET"]),
            Route(p, g(self.update_vendor), methods=["PATCH"]),
            Route(f"{p}/service", g(self.create_service), methods=["POST"]),
            Route(f"{p}/service/{{service_id}}", g(self.get_service), methods=["GET"]),
            Route(f"{p}/service/{{service_id}}/count", g(self.set_count), methods=["POST"]),
            Route(f"{p}/organization", g(self.get_organization), methods=["GET"]),
            Route(f"{p}/organization/status/{{status}}", g(self.set_status), methods=["PATCH"]),
            Route(f"{p}/organization/clients", g(self.get_clients), methods=["GET"]),
            Route(f"{p}/organization/accounts", g(self.get_accounts), methods=["GET"]),
            Route(f"{p}/organization/accounts", g(self.create_accounts), methods=["POST"]),
            Route(
                f"{p}/organization/accounts/{{account_id:path}}", g(self.update_account), methods=["PATCH"]
            ),
            Route(f"{p}/alerting/debug/{{message_id}}", g(self.alert_status), methods=["GET"]),
            Route(f"{p}/alerting/{{account_id:path}}", g(self.create_alert), methods=["POST"]),
        ]

    def _guarded(self, handler: PartnerHandler) -> Endpoint:
        """Authenticate the token, then run the handler with the partner's organization id.

        GUESS: vendor-level endpoints (vendor, services) accept the token of any registered
        partner of this vendor; Gradient documents the token only as vendor key + partner key.
        """

        async def endpoint(request: Request) -> Response:
            try:
                organization_id = self.state.authenticate(request.headers.get(TOKEN_HEADER))
                return await handler(request, organization_id)
            except EmulatorError as exc:
                return JSONResponse(exc.body(), status_code=exc.status)

        return endpoint

    # -- vendor and services -------------------------------------------------------------------

    async def get_vendor(self, request: Request, organization_id: str) -> Response:
        return _wrapped(self.state.vendor_view(), "Vendor retrieved successfully")

    async def update_vendor(self, request: Request, organization_id: str) -> Response:
        body = require_object(await read_json(request))
        fields = {key: optional_string(body, key) for key in _VENDOR_FIELDS if key in body}
        if not fields:
            raise BadRequest(f"body must contain at least one of: {', '.join(_VENDOR_FIELDS)}")
        if "name" in fields and not (fields["name"] or "").strip():
            raise BadRequest("name should not be empty")
        return _wrapped(self.state.update_vendor(fields), "Vendor updated successfully")

    async def create_service(self, request: Request, organization_id: str) -> Response:
        body = require_object(await read_json(request))
        vendor = self.state.create_service(
            name=require_string(body, "name"),
            description=require_string(body, "description"),
            category=require_string(body, "category"),
            subcategory=require_string(body, "subcategory"),
            support_article=optional_string(body, "supportArticle"),
            support_contact=optional_string(body, "supportContact"),
        )
        return JSONResponse(vendor, status_code=200)

    async def get_service(self, request: Request, organization_id: str) -> Response:
        service = self.state.get_service(request.path_params["service_id"])
        return _wrapped(service, "Service retrieved successfully")

    async def set_count(self, request: Request, organization_id: str) -> Response:
        body = require_object(await read_json(request))
        account_id = body.get("accountId")
        unit_count = body.get("unitCount")
        if not isinstance(account_id, str) or not account_id:
            raise BadRequest("accountId must be a non-empty string")
        if not is_number(unit_count):
            raise BadRequest("unitCount must be a number")
        if unit_count < 0:
            raise BadRequest("unitCount must not be less than 0")
        no_build = request.query_params.get("no_build", "").lower() == "true"
        self.state.set_count(
            organization_id, request.path_params["service_id"], account_id, unit_count, no_build=no_build
        )
        return JSONResponse({"status": 201, "message": "Unit count updated successfully"}, status_code=201)

    # -- organization ----------------------------------------------------------------------------

    async def get_organization(self, request: Request, organization_id: str) -> Response:
        return JSONResponse(self.state.integration_view(organization_id))

    async def set_status(self, request: Request, organization_id: str) -> Response:
        integration = self.state.set_status(organization_id, request.path_params["status"])
        return _wrapped(integration, "Integration status updated successfully")

    async def get_clients(self, request: Request, organization_id: str) -> Response:
        page = self.state.list_clients(
            organization_id, request.query_params.get("search"), request.query_params.get("previousId")
        )
        return JSONResponse(page)

    async def get_accounts(self, request: Request, organization_id: str) -> Response:
        return JSONResponse(self.state.list_accounts(organization_id))

    async def create_accounts(self, request: Request, organization_id: str) -> Response:
        body = await read_json(request)
        if not isinstance(body, list):
            raise BadRequest("body must be a JSON array of accounts")
        if not body:
            # GUESS: an empty array is rejected; callers should skip the call when nothing is missing.
            raise BadRequest("body must contain at least one account")
        accounts = [_parse_new_account(item, index) for index, item in enumerate(body)]
        return JSONResponse(self.state.create_accounts(organization_id, accounts), status_code=201)

    async def update_account(self, request: Request, organization_id: str) -> Response:
        body = require_object(await read_json(request))
        fields = {key: body[key] for key in _ACCOUNT_FIELDS if key in body}
        if not fields:
            raise BadRequest(f"body must contain at least one of: {', '.join(_ACCOUNT_FIELDS)}")
        for key in ("id", "name"):
            if key in fields:
                require_string(fields, key)
        optional_string(fields, "description")
        account = self.state.update_account(organization_id, request.path_params["account_id"], fields)
        return JSONResponse(account)

    # -- alerts ----------------------------------------------------------------------------------

    async def create_alert(self, request: Request, organization_id: str) -> Response:
        body = require_object(await read_json(request))
        alert: dict[str, Any] = {
            key: require_string(body, key) for key in ("title", "description", "alertId")
        }
        priority = body.get("priority")
        if priority is not None and (not is_number(priority) or priority not in (1, 2, 3, 4)):
            raise BadRequest("priority must be one of 1, 2, 3, 4")
        alert["priority"] = priority
        for key in ("status", "dueDateTime", "serviceId"):
            alert[key] = optional_string(body, key)
        queued = self.state.create_alert(organization_id, request.path_params["account_id"], alert)
        return JSONResponse(queued, status_code=201)

    async def alert_status(self, request: Request, organization_id: str) -> Response:
        return JSONResponse(self.state.alert_status(organization_id, request.path_params["message_id"]))


def _parse_new_account(item: Any, index: int) -> Account:
    entry = require_object(item, f"accounts[{index}]")
    try:
        return Account(
            id=require_string(entry, "id"),
            name=require_string(entry, "name"),
            description=optional_string(entry, "description"),
        )
    except BadRequest as exc:
        raise BadRequest(f"accounts[{index}].{exc.message}") from exc
