"""What the tests of GGUF models that hear and see share: the tiny checkpoints built by
`scripts/make_tiny_gguf.py`, the spoken clip both sides read alike, and chat requests."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.audio_helpers import librivox_clips
from tests.conftest import MODEL_DATA, ROOT, run_server

# 29.985 s: the longest clip that both sides read as one 30 s window of 750 audio embeddings (transformers counts
# the clip's own frames, libmtmd whole windows)
CLIP_SAMPLES = 479760
MAX_TOKENS = 12


def tiny_gguf(family: str) -> Path:
    """The tiny GGUF pair (and its HF folder) of a family, built once."""
    out = MODEL_DATA / f"tiny-{family.replace('_', '-')}-gguf"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_gguf.py"), str(out), "--family", family],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def served_pair():
    """Module fixtures `server` (the test module's `tiny` pair, with no speech or embedding model beside it;
    Whisper stays, for transcriptions) and `http` (a client of it)."""

    @pytest.fixture(scope="module")
    def server(tiny, tmp_path_factory):
        with run_server("--model-path", str(tiny / "model.gguf"), "--mmproj", str(tiny / "mmproj.gguf"),
                        "--tts-model", "none", "--embedding-model", "none",
                        tmp_path=tmp_path_factory.mktemp("gguf")) as s:
            yield s

    @pytest.fixture(scope="module")
    def http(server):
        with server.http() as client:
            yield client

    return server, http


def spoken_clip() -> tuple[np.ndarray, bytes]:
    """A LibriVox sentence, then quiet, 29.985 s in all: as samples and as a WAV file."""
    audio, rate = sf.read(librivox_clips()[0][0], dtype="float32")
    assert rate == 16000
    audio = np.concatenate([audio, np.zeros(CLIP_SAMPLES - len(audio), np.float32)])
    out = io.BytesIO()
    sf.write(out, audio, 16000, format="WAV", subtype="FLOAT")
    return audio, out.getvalue()


def audio_part(wav: bytes) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}


def chat(http, content, **extra) -> dict:
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}],
                                                "max_tokens": MAX_TOKENS, "temperature": 0, **extra})
    assert r.status_code == 200, r.text
    return r.json()
