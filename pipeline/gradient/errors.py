"""Exceptions raised by the Gradient client.

Every error names the HTTP method and the request *path* only: never the URL query, the
headers, the token or the keys. Errors are raised outside any ``except`` block by the client,
so they carry no ``__cause__``/``__context__`` pointing at httpx objects (whose request holds
the ``GRADIENT-TOKEN`` header).
"""

from __future__ import annotations

from typing import Any


class GradientError(Exception):
    """Base class: a Gradient call failed; ``str(exc)`` says what is wrong and the fix."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        method: str | None = None,
        path: str | None = None,
        partner_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.method = method
        self.path = path
        self.partner_id = partner_id

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status_code={self.status_code!r}, method={self.method!r}, "
            f"path={self.path!r}, partner_id={self.partner_id!r}, message={self.message!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Keep the keyword attributes when pickled (Dagster ships errors across processes)."""
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))


def _rebuild(cls: type[GradientError], message: str, state: dict[str, Any]) -> GradientError:
    error = cls(message)
    error.__dict__.update(state)
    return error


class GradientAuthError(GradientError):
    """401: the partner's key (or the vendor key) is not accepted."""


class GradientForbiddenError(GradientError):
    """403: Gradient flags an "anomaly" in API usage."""


class GradientNotFoundError(GradientError):
    """404 on any call other than set unit count (where 404 means "unmapped")."""


class GradientRateLimitedError(GradientError):
    """429 still answered after every attempt."""


class GradientServerError(GradientError):
    """5xx still answered after every attempt."""


class GradientUnavailableError(GradientError):
    """Transport failure (connect, timeout, reset, protocol) after every attempt."""


class GradientRequestError(GradientError):
    """Any other 4xx: the request itself is wrong; retrying does not help."""


class GradientUnexpectedAnswerError(GradientError):
    """A 2xx whose body is not Gradient's documented JSON (a proxy page, empty, truncated, or
    over the size cap): not Gradient's answer, so nothing is taken as done."""
