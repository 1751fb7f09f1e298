"""Request-body checks shared by the vendor and admin APIs (each failure is a 400)."""

from __future__ import annotations

import json
import math
from typing import Any, TypeGuard

from starlette.requests import Request

from .errors import BadRequest


async def read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise BadRequest("Request body must be JSON")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise BadRequest("Request body is not UTF-8") from exc


def require_object(value: Any, what: str = "body") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def require_string(body: dict[str, Any], key: str, *, allow_empty: bool = False) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    if not allow_empty and not value.strip():
        raise BadRequest(f"{key} should not be empty")
    return value


def optional_string(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value


def is_number(value: Any) -> TypeGuard[int | float]:
    """JSON number, finite; booleans are not numbers."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def string_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadRequest(f"{what} must be a JSON array of strings")
    return value
