"""Local HTTP emulator of Gradient MSP's "Synthesize" vendor API (see gradient-synthesize-api.md).

``create_app`` builds the Starlette app; ``EmulatorServer`` runs it with uvicorn in a background
thread; ``serve`` runs it in the foreground; ``EmulatorAdmin`` drives its ``/_admin`` API.
"""

from .admin_client import EmulatorAdmin
from .app import create_app
from .catalog import (
    ADMIN_PREFIX,
    API_PREFIX,
    INTEGRATION_STATUSES,
    SERVICE_CATEGORIES,
    SERVICE_SUBCATEGORIES,
    TOKEN_HEADER,
    make_token,
)
from .server import EmulatorServer, serve
from .state import EmulatorState

__all__ = [
    "ADMIN_PREFIX",
    "API_PREFIX",
    "INTEGRATION_STATUSES",
    "SERVICE_CATEGORIES",
    "SERVICE_SUBCATEGORIES",
    "TOKEN_HEADER",
    "EmulatorAdmin",
    "EmulatorServer",
    "EmulatorState",
    "create_app",
    "make_token",
    "serve",
]
