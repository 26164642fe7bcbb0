"""Pure ASGI middleware (no BaseHTTPMiddleware: it breaks streaming and
disconnect detection): the API key check and the request-body size cap."""

from __future__ import annotations

import hmac

from fastapi.responses import JSONResponse

from omniserve.api.errors import omni_error_body
from omniserve.errors import OmniError, PayloadTooLarge, Unauthorized

OPEN_PATHS = frozenset({"/health"})
INSECURE_KEY_PROTOCOL = b"openai-insecure-api-key."


async def _reject(exc: OmniError, scope, receive, send) -> None:
    await JSONResponse(omni_error_body(exc), status_code=exc.status_code)(scope, receive, send)


class ApiKeyMiddleware:
    def __init__(self, app, api_key: str, open_paths: frozenset[str] = OPEN_PATHS,
                 open_prefixes: tuple[str, ...] = ()):
        """`open_paths`, `open_prefixes`: what needs no key (a page that asks for the key itself)."""
        self._open_paths, self._open_prefixes = open_paths, open_prefixes
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or path in self._open_paths \
                or path.startswith(self._open_prefixes):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"")
        token = auth[7:].strip() if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        if not token and scope["type"] == "websocket":  # browsers cannot set headers: the key rides as a subprotocol
            offered = [p.strip() for p in headers.get(b"sec-websocket-protocol", b"").split(b",")]
            token = next((p[len(INSECURE_KEY_PROTOCOL):] for p in offered if p.startswith(INSECURE_KEY_PROTOCOL)), b"")
        if not hmac.compare_digest(token, self._key):
            if scope["type"] == "websocket":  # closing before the handshake answers it with 403
                return await send({"type": "websocket.close", "code": 1008})
            message = "Invalid API key." if token else "Missing API key: send 'Authorization: Bearer <key>'."
            return await _reject(Unauthorized(message), scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = PayloadTooLarge(f"the request body is larger than the limit of {self.max_bytes} bytes")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _reject(too_large, scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large
            return message

        return await self.app(scope, limited_receive, send)
