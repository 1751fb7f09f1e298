"""Errors the emulator turns into Gradient-style JSON error bodies."""

from __future__ import annotations

from http import HTTPStatus


class EmulatorError(Exception):
    """An API error with an HTTP status; rendered as ``{"statusCode", "message", "error"}``."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, object]:
        return error_body(self.status, self.message)


class BadRequest(EmulatorError):
    status = 400


class Unauthorized(EmulatorError):
    status = 401


class NotFound(EmulatorError):
    status = 404


class Conflict(EmulatorError):
    status = 409


def error_body(status: int, message: str) -> dict[str, object]:
    """NestJS-style error body (Gradient's API is NestJS: ``statusCode`` + ``message``)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return {"statusCode": status, "message": message, "error": phrase}
