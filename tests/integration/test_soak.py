"""A short soak (bench/soak.py): streaming chats with embeddings, speech and transcription beside
them, two rounds. No error but an immediate 503, every route completes work, the load goes back to
zero, and resident memory does not grow round over round."""

from __future__ import annotations

import sys

from tests.conftest import ROOT, run_server

sys.path.insert(0, str(ROOT / "bench"))
from soak import MEMORY_SLACK, soak  # noqa: E402


def test_short_soak(tmp_path):
    with run_server("--max-running-requests", "4", "--max-queued-requests", "8", tmp_path=tmp_path) as s:
        rounds = soak(s.base_url, seconds=12, rounds=2, chats=16)
    for r in rounds:
        assert r.unclean == 0, r.errors
        assert {"chat", "/v1/embeddings", "/v1/audio/speech", "/v1/audio/transcriptions"} <= set(r.completed), r
        assert r.idle_after and r.ttfts
    assert rounds[1].rss_after <= rounds[0].rss_after * (1 + MEMORY_SLACK), (rounds[0].rss_after, rounds[1].rss_after)
