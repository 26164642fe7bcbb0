"""The small protocol every executor implements.

An executor wraps one model runtime. The stage worker calls `load` once, then
alternates `add`/`abort` (between steps) with `step` (one batched forward
pass). It knows nothing about HTTP or other stages.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from omniserve.errors import InvalidRequest
from omniserve.runtime.types import OmniOutput, OmniRequest

P = TypeVar("P", bound=BaseModel)


def request_params(model: type[P], data: dict[str, Any]) -> P:
    """A request's settings for a stage (`OmniRequest.params`), or a 400 naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(map(str, err["loc"]))
        raise InvalidRequest(f"{field}: {err['msg']}", param=field) from None


class Executor(Protocol):
    def load(self) -> dict[str, Any]:
        """Load the model; return facts for /get_model_info (context length, ...)."""

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        """Admit a request. Raise an `OmniError` to reject it."""

    def feed(self, outputs: list[OmniOutput]) -> list[OmniOutput]:
        """Take upstream outputs for a request already added (graph edges). Raise an
        `OmniError` to fail the request."""

    def abort(self, request_id: str) -> None:
        """Drop a request and free its resources before the next step."""

    def has_work(self) -> bool: ...

    def step(self) -> list[OmniOutput]:
        """Run one batched step and return what it produced."""

    def close(self) -> None: ...
