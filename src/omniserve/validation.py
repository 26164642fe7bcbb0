"""One pydantic validation error, in words a person can act on: the API, the CLI, the YAML config and
the executors' per-request settings all name the field this way."""

from __future__ import annotations

from typing import Any


def first_error(exc: Any, deepest: bool = False) -> tuple[tuple, str]:
    """(where, what) of the error to report from a pydantic `ValidationError` (or FastAPI's
    `RequestValidationError`): the first, or the one deepest in the data (a union reports an error
    for each of its members, and the deepest is the most specific)."""
    errors = exc.errors()
    err = max(errors, key=lambda e: len(e["loc"])) if deepest else errors[0]
    message = err["msg"].removeprefix("Value error, ")
    if deepest and err["type"] == "missing":
        message = "this parameter is required"
    return tuple(err["loc"]), message
