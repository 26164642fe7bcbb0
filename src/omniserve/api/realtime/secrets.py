"""Client secrets (OpenAI's ephemeral keys, `POST /v1/realtime/client_secrets`): short-lived keys that a
browser may hold instead of the API key. One opens a realtime session, and nothing else, until it expires;
the session it opens starts with the settings it was made with. They live in this process's memory."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from omniserve.api.realtime.protocol import SessionSpec

PREFIX = "ek_"
MAX_LIVE = 10_000  # keys alive at once: past it the oldest go (a client that mints in a loop holds no memory)
REALTIME_PATHS = ("/v1/realtime", "/v1/realtime/calls")  # what a client secret opens


@dataclass(frozen=True)
class ClientSecret:
    value: str
    expires_at: int  # unix seconds
    session: SessionSpec


class ClientSecrets:
    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._live: dict[str, ClientSecret] = {}

    def issue(self, session: SessionSpec, seconds: int) -> ClientSecret:
        self._forget_expired()
        while len(self._live) >= MAX_LIVE:
            del self._live[next(iter(self._live))]
        secret = ClientSecret(PREFIX + secrets.token_urlsafe(24), int(self._clock()) + seconds, session)
        self._live[secret.value] = secret
        return secret

    def get(self, value: str) -> ClientSecret | None:
        """The secret `value` names, if it is one and has not expired."""
        secret = self._live.get(value)
        if secret is not None and secret.expires_at <= self._clock():
            del self._live[value]
            return None
        return secret

    def opens(self, value: str, path: str) -> bool:
        """Whether `value` is a live client secret and `path` is what one opens."""
        return path in REALTIME_PATHS and self.get(value) is not None

    def _forget_expired(self) -> None:
        now = self._clock()
        for value in [v for v, s in self._live.items() if s.expires_at <= now]:
            del self._live[value]
