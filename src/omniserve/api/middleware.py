"""Pure ASGI middleware (no BaseHTTPMiddleware: it breaks streaming and
disconnect detection): the API key check, the request-body size cap, and the
check that a browser page of another site does not drive the server."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse

from omniserve.api.errors import omni_error_body
from omniserve.errors import Forbidden, OmniError, PayloadTooLarge, Unauthorized

OPEN_PATHS = frozenset({"/health"})
INSECURE_KEY_PROTOCOL = b"openai-insecure-api-key."


async def _reject(exc: OmniError, scope, receive, send) -> None:
    await JSONResponse(omni_error_body(exc), status_code=exc.status_code)(scope, receive, send)


def presented_key(scope) -> str:
    """The key a request presents: `Authorization: Bearer`, `x-api-key`, or (a browser's WebSocket cannot
    set headers) the `openai-insecure-api-key.<key>` subprotocol."""
    headers = dict(scope["headers"])
    auth = headers.get(b"authorization", b"")
    token = auth[7:].strip() if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
    if not token and scope["type"] == "websocket":
        offered = [p.strip() for p in headers.get(b"sec-websocket-protocol", b"").split(b",")]
        token = next((p[len(INSECURE_KEY_PROTOCOL):] for p in offered if p.startswith(INSECURE_KEY_PROTOCOL)), b"")
    return token.decode("latin-1")


class ApiKeyMiddleware:
    def __init__(self, app, api_key: str, open_paths: frozenset[str] = OPEN_PATHS,
                 open_prefixes: tuple[str, ...] = (), also: Callable[[str, str], bool] | None = None):
        """`open_paths`, `open_prefixes`: what needs no key (a page that asks for the key itself). `also(key,
        path)`: whether another key opens `path` (a realtime client secret)."""
        self._open_paths, self._open_prefixes = open_paths, open_prefixes
        self.app = app
        self._key = api_key.encode()
        self._also = also

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or path in self._open_paths \
                or path.startswith(self._open_prefixes):
            return await self.app(scope, receive, send)
        token = presented_key(scope)
        if not hmac.compare_digest(token.encode("latin-1"), self._key) and \
                not (self._also is not None and self._also(token, path)):
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


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int] | None:
    """scheme, host and port of an origin (`http://localhost:8000`), or None if it is not one."""
    try:
        parts = urlsplit(url.strip().lower())
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    return (parts.scheme, parts.hostname, port) if parts.scheme in _DEFAULT_PORTS and parts.hostname else None


class SameOriginMiddleware:
    """A web page the user opens may send requests to a server on their machine, which needs no key there:
    requests that change something (every method but GET, HEAD and OPTIONS) and WebSocket upgrades whose
    `Origin` is neither the server's own (the scheme and the Host it was reached at: the playground) nor an
    `--allowed-origins` one are refused with 403. Clients that are not browsers send no Origin."""

    SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app, allowed_origins: list[str]):
        self.app = app
        self._any = "*" in allowed_origins
        self._allowed = {o for o in map(_origin, allowed_origins) if o} | (
            {"null"} if "null" in allowed_origins else set())

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind not in ("http", "websocket") or self._any or (kind == "http" and scope["method"] in self.SAFE_METHODS):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        if origin is None or self._allowed_origin(origin.decode("latin-1"), scope, headers):
            return await self.app(scope, receive, send)
        if kind == "websocket":  # closing before the handshake answers it with 403
            return await send({"type": "websocket.close", "code": 1008})
        shown = origin.decode("latin-1")[:100]
        return await _reject(Forbidden(f"a web page at {shown!r} may not call this server: only its own pages and "
                                       "the origins given to --allowed-origins may"), scope, receive, send)

    def _allowed_origin(self, origin: str, scope, headers: dict[bytes, bytes]) -> bool:
        if origin.strip().lower() == "null":
            return "null" in self._allowed
        theirs = _origin(origin)
        if theirs is None:
            return False
        scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope.get("scheme", "http"))
        ours = _origin(f"{scheme}://{headers.get(b'host', b'').decode('latin-1')}")
        return theirs == ours or theirs in self._allowed
