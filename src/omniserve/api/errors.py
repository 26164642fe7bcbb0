"""The one place where errors become HTTP responses in the OpenAI envelope.

`{"error": {"message", "type", "param", "code"}}`. Typed `OmniError`s carry
their status; anything else is a 500 whose body never holds a traceback.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from omniserve.api import openapi
from omniserve.api.protocol.common import loc_to_param
from omniserve.errors import OmniError
from omniserve.validation import first_error

log = logging.getLogger(__name__)

_HTTP_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    503: "service_unavailable",
}


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def omni_error_body(exc: OmniError) -> dict:
    return error_body(exc.message, exc.error_type, exc.param, exc.code)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, _HTTP_TYPES.get(status, "internal_error"), param, code), status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OmniError)
    async def _omni(_: Request, exc: OmniError) -> JSONResponse:
        return JSONResponse(omni_error_body(exc), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        loc, message = first_error(exc)
        param = loc_to_param(tuple(p for p in loc if p not in ("body", "query", "path")))
        return error_response(400, f"{param}: {message}" if param else message, param or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Unknown route: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        response = error_response(exc.status_code, message)
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # every method the path takes, not just those of the route that matched
            response.headers["Allow"] = ", ".join(openapi.methods_for(request.app, request.url.path))
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, f"internal server error ({type(exc).__name__}); see the server log")
