"""Fetch the bytes behind a media reference, safely.

Every media input a client names goes through `fetch`: `data:` URLs are
decoded, http(s) URLs are fetched with a timeout, a size cap and at most
three redirects, each hop re-checked against private, loopback, link-local
and metadata addresses (unless `--allow-private-media-urls`). Anything else
is refused with a 400 that names the item.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from omniserve.errors import InvalidRequest, PayloadTooLarge

MAX_REDIRECTS = 3


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = 32 * 1024 * 1024
    allow_private_urls: bool = False
    timeout_s: float = 10.0


def decode_base64(data: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{where}: the data is not valid base64", param=where) from None


async def fetch(reference: str, where: str, limits: MediaLimits) -> bytes:
    if reference.startswith("data:"):
        header, sep, payload = reference.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidRequest(f"{where}: a data URL must look like data:<mime>;base64,<data>", param=where)
        data = decode_base64(payload, where)
    elif urlsplit(reference).scheme in ("http", "https"):
        data = await _fetch_http(reference, where, limits)
    else:
        raise InvalidRequest(f"{where}: the URL must be http(s):// or a data: URL", param=where)
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"{where}: the media is larger than {limits.max_bytes} bytes", param=where)
    return data


async def _fetch_http(url: str, where: str, limits: MediaLimits) -> bytes:
    timeout = httpx.Timeout(limits.timeout_s, connect=min(5.0, limits.timeout_s))
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            await _check_host(url, where, limits)
            try:
                async with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    if response.status_code != 200:
                        raise InvalidRequest(f"{where}: fetching {url} gave HTTP {response.status_code}", param=where)
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > limits.max_bytes:
                            raise PayloadTooLarge(f"{where}: the media at {url} is larger than "
                                                  f"{limits.max_bytes} bytes", param=where)
                    return bytes(body)
            except httpx.HTTPError as exc:
                raise InvalidRequest(f"{where}: could not fetch {url}: {type(exc).__name__}", param=where) from None
    raise InvalidRequest(f"{where}: more than {MAX_REDIRECTS} redirects", param=where)


async def _check_host(url: str, where: str, limits: MediaLimits) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"{where}: the URL must be http(s) with a host", param=where)
    if limits.allow_private_urls:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 443,
                                                             type=socket.SOCK_STREAM)
    except OSError:
        raise InvalidRequest(f"{where}: cannot resolve host {parts.hostname!r}", param=where) from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global:
            raise InvalidRequest(
                f"{where}: the URL points to a private or local address, which is refused "
                "(start the server with --allow-private-media-urls to allow it)", param=where)
