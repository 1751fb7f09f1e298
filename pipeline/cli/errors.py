"""How the CLI shows an error: the error an op or resource raised, out of Dagster's wrappers
around it, and (``--verbose``) its full trace. Imports only click."""

from __future__ import annotations

import click

# Dagster's wrappers around the error an op raised: the CLI shows what they wrap.
DAGSTER_WRAPPERS = frozenset(
    {
        "DagsterExecutionStepExecutionError",
        "DagsterUserCodeExecutionError",
        "DagsterResourceFunctionError",
        "DagsterExecutionHandleOutputError",
        "DagsterExecutionLoadInputError",
    }
)


def underlying_error(exc: BaseException) -> BaseException:
    """The error an op or resource raised, out of Dagster's wrappers around it."""
    seen = set()
    while type(exc).__name__ in DAGSTER_WRAPPERS and id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "user_exception", None) or exc.__cause__
        if inner is None:
            break
        exc = inner
    return exc


def underlying_error_text(error) -> str:
    """The same for a run's serialized error (``SerializableErrorInfo``): the wrapped error's
    message ("OSError: [Errno 30] ..."), not "Error occurred while executing op"."""
    while error is not None and error.cls_name in DAGSTER_WRAPPERS and error.cause is not None:
        error = error.cause
    return error.message if error is not None else ""


def echo_trace(exc: BaseException | None) -> None:
    """The full trace of ``exc`` on stderr (``--verbose``)."""
    if exc is None:
        return
    import traceback

    click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
