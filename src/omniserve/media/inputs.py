"""Fetch the bytes behind a media reference, safely.

Every media input a client names goes through `fetch`:
- `data:` URLs are decoded;
- http(s) URLs are fetched with a timeout per read, a deadline for the
  whole fetch (a source trickling a byte at a time cannot hold a request),
  a size cap and at most three redirects. Each hop's host is resolved and checked against private,
  loopback, link-local and metadata addresses (unless
  `--allow-private-media-urls`), and the connection goes to the address
  that was checked, so a second DNS answer cannot swap it (DNS rebinding);
- `file://` URLs and bare paths are read only from inside
  `--allowed-local-media-path`, after resolving `..` and symlinks. A path
  outside it gets the same answer as a missing file, so probing reveals
  nothing.
Anything else is refused with a 400 that names the item.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import httpx

from omniserve.errors import InvalidRequest, PayloadTooLarge

MAX_REDIRECTS = 3


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = 32 * 1024 * 1024
    allow_private_urls: bool = False
    timeout_s: float = 10.0  # per connect and read
    deadline_s: float = 30.0  # for the whole fetch, redirects included (--media-fetch-timeout)
    local_root: Path | None = None  # --allowed-local-media-path; None: no file access


@dataclass(frozen=True)
class Fetched:
    data: bytes
    mime: str | None  # as the sender declared it (data URL or Content-Type); None for files


def decode_base64(data: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{where}: the data is not valid base64", param=where) from None


async def fetch(reference: str, where: str, limits: MediaLimits) -> Fetched:
    scheme = urlsplit(reference).scheme
    if reference.startswith("data:"):
        header, sep, payload = reference.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidRequest(f"{where}: a data URL must look like data:<mime>;base64,<data>", param=where)
        fetched = Fetched(decode_base64(payload, where), header[5:].removesuffix(";base64").lower() or None)
    elif scheme in ("http", "https"):
        try:
            fetched = await asyncio.wait_for(_fetch_http(reference, where, limits), limits.deadline_s)
        except TimeoutError:
            raise InvalidRequest(f"{where}: fetching {reference} took longer than {limits.deadline_s:g} s "
                                 "(--media-fetch-timeout)", param=where, code="media_fetch_timeout") from None
    elif scheme == "file" or not scheme:
        fetched = Fetched(await asyncio.to_thread(_read_local, reference, where, limits), None)
    else:
        raise InvalidRequest(f"{where}: the URL must be http(s)://, data: or file:// (or a file path)", param=where)
    if len(fetched.data) > limits.max_bytes:
        raise PayloadTooLarge(f"{where}: the media is larger than {limits.max_bytes} bytes", param=where)
    return fetched


def inside(root: Path, reference: str) -> Path | None:
    """`reference` (relative to `root`, or absolute) resolved through `..` and symlinks, if it
    stays inside `root`; None otherwise, whether or not it exists (a NUL is in no path)."""
    if "\0" in reference:
        return None
    base = root.resolve()
    path = (base / reference).resolve()
    return path if path.is_relative_to(base) else None


def _read_local(reference: str, where: str, limits: MediaLimits) -> bytes:
    if limits.local_root is None:
        raise InvalidRequest(f"{where}: local file paths are off on this server (start it with "
                             "--allowed-local-media-path DIR to serve files from DIR)", param=where)
    parts = urlsplit(reference)
    if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
        raise InvalidRequest(f"{where}: a file:// URL must name a local path (file:///...)", param=where)
    path = inside(limits.local_root, unquote(parts.path if parts.scheme == "file" else reference))
    if path is None or not path.is_file():
        raise InvalidRequest(f"{where}: no readable file at that path inside the allowed media folder "
                             "(--allowed-local-media-path)", param=where)
    if path.stat().st_size > limits.max_bytes:
        raise PayloadTooLarge(f"{where}: the file is larger than {limits.max_bytes} bytes", param=where)
    return path.read_bytes()


async def _fetch_http(url: str, where: str, limits: MediaLimits) -> Fetched:
    timeout = httpx.Timeout(limits.timeout_s, connect=min(5.0, limits.timeout_s))
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            target, headers, extensions = await _pinned(url, where, limits)
            try:
                async with client.stream("GET", target, headers=headers, extensions=extensions) as response:
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
                    mime = response.headers.get("content-type", "").split(";")[0].strip().lower() or None
                    return Fetched(bytes(body), mime)
            except httpx.HTTPError as exc:
                raise InvalidRequest(f"{where}: could not fetch {url}: {type(exc).__name__}", param=where) from None
    raise InvalidRequest(f"{where}: more than {MAX_REDIRECTS} redirects", param=where)


async def _pinned(url: str, where: str, limits: MediaLimits) -> tuple[str, dict[str, str], dict[str, str]]:
    """The URL to connect to, with the Host header and TLS name that keep it the same request:
    the checked address itself unless private addresses are allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"{where}: the URL must be http(s) with a host", param=where)
    if limits.allow_private_urls:
        return url, {}, {}
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 443,
                                                             type=socket.SOCK_STREAM)
    except OSError:
        raise InvalidRequest(f"{where}: cannot resolve host {parts.hostname!r}", param=where) from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses or any(not a.is_global for a in addresses):
        raise InvalidRequest(
            f"{where}: the URL points to a private or local address, which is refused "
            "(start the server with --allow-private-media-urls to allow it)", param=where)
    host = f"[{addresses[0]}]" if addresses[0].version == 6 else str(addresses[0])
    netloc = f"{host}:{parts.port}" if parts.port else host
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return urlunsplit(parts._replace(netloc=netloc)), {"host": parts.netloc.rpartition("@")[2]}, extensions
