"""Realtime client secrets (`api/realtime/secrets.py`) on a clock of our own: they expire, open only the
realtime paths, and a client that mints them in a loop cannot make the store grow without end."""

from __future__ import annotations

from omniserve.api.realtime import secrets
from omniserve.api.realtime.protocol import SessionSpec


def test_a_secret_opens_the_realtime_paths_until_it_expires():
    now = [1000.0]
    store = secrets.ClientSecrets(clock=lambda: now[0])
    secret = store.issue(SessionSpec(instructions="hi"), seconds=60)
    assert secret.value.startswith("ek_") and secret.expires_at == 1060
    assert store.opens(secret.value, "/v1/realtime") and store.opens(secret.value, "/v1/realtime/calls")
    assert not store.opens(secret.value, "/v1/chat/completions") and not store.opens("ek_other", "/v1/realtime")
    assert store.get(secret.value).session.instructions == "hi"
    now[0] = 1060.0
    assert store.get(secret.value) is None and not store.opens(secret.value, "/v1/realtime")


def test_the_store_keeps_a_bounded_number_of_live_secrets(monkeypatch):
    monkeypatch.setattr(secrets, "MAX_LIVE", 3)
    store = secrets.ClientSecrets(clock=lambda: 0.0)
    made = [store.issue(SessionSpec(), 60).value for _ in range(5)]
    assert [store.get(v) is not None for v in made] == [False, False, True, True, True]  # the oldest went
