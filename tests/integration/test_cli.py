"""The CLI: documented flags, one-line errors, validated config overrides."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import run_server


def omniserve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The CLI as on a fresh machine: an empty home (no ~/.cache), no OMNISERVE_* settings."""
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMNISERVE_")} | {"HOME": home}
        return subprocess.run([sys.executable, "-m", "omniserve", *args], capture_output=True, text=True,
                              timeout=timeout, env=env)


def test_help_documents_every_flag():
    out = omniserve("serve", "--help").stdout
    for flag in ("--model-path", "--config", "--host", "--port", "--served-model-name", "--log-level",
                 "--api-key", "--max-running-requests", "--max-queued-requests", "--context-length",
                 "--threads", "--model-name", "--text-only", "--colocate", "--mem-fraction-static",
                 "--enable-cache-report", "--omni", "--allowed-local-media-path", "--max-image-pixels",
                 "--max-video-seconds", "--max-media-items", "--vision-model", "--mmproj", "--image-model",
                 "--image-ttl-seconds", "--max-video-jobs", "--max-generated-image-size"):
        assert flag in out, flag


@pytest.mark.parametrize(
    "args,says",
    [
        (["serve", "--no-such-flag"], "--no-such-flag"),
        (["serve", "--port", "eighty"], "--port"),
        (["serve", "--model-path", "/nope/model.gguf"], "model file not found: /nope/model.gguf"),
        (["serve", "--max-running-requests", "0"], "--max-running-requests"),
        (["serve", "--mem-fraction-static", "1.5"], "--mem-fraction-static"),
        (["serve", "--log-level", "loud"], "--log-level"),
        (["serve", "--image-model", "dall-e"], "use KIND:PATH"),
        (["serve", "--image-model", "sketch-rnn:/nope"], "not a folder of sketch-rnn"),
        (["serve", "--mmproj", "/nope/mmproj.gguf"], "--mmproj /nope/mmproj.gguf: no such file"),
        (["serve", "--vision-model", "/nope/classifier.onnx"], "--vision-model"),
        (["serve", "--max-image-pixels", "0"], "--max-image-pixels"),
    ],
)
def test_bad_invocation_exits_with_one_line(args, says):
    r = omniserve(*args)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert says in lines[0]


def test_not_a_gguf(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not a model")
    r = omniserve("serve", "--model-path", str(bogus))
    assert r.returncode != 0 and "not a GGUF" in r.stderr


def test_corrupt_gguf_fails_with_one_line(tmp_path):
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    # its own data dir: on a fresh machine the first start also converts the image classifier and joins
    # Kokoro's parts (and says so)
    r = omniserve("serve", "--model-path", str(bogus), "--data-dir", str(tmp_path), "--vision-model", "none",
                  "--tts-model", "none")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "failed to start" in lines[0] and "broken.gguf" in lines[0]


@pytest.mark.parametrize(
    "yaml_text,says",
    [
        ("stages:\n  thinker:\n    args:\n      n_batch: lots\n", "stages.thinker.args.n_batch"),
        ("stages:\n  thinker:\n    args:\n      bogus_knob: 1\n", "bogus_knob"),
        ("stages:\n  painter:\n    args: {}\n", "unknown stage 'painter'"),
        ("stages:\n  thinker:\n    executor: nope\n", "unknown executor 'nope'"),
        ("terminals: [thinker]\n", "unknown top-level key(s) ['terminals']"),
        ("- not a mapping\n", "mapping"),
    ],
)
def test_bad_config_yaml_fails_at_startup(tmp_path, yaml_text, says):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml_text)
    r = omniserve("serve", "--config", str(path))
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], r.stderr


def test_config_override_and_served_names(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("stages:\n  thinker:\n    args:\n      context_length: 512\n      n_batch: 64\n")
    with run_server("--config", str(path), "--served-model-name", "alpha", "beta", tmp_path=tmp_path) as s:
        with s.http() as http:
            ids = [m["id"] for m in http.get("/v1/models").json()["data"]]
            assert ids == ["alpha", "beta", "whisper-tiny.en", "imagenet-ocr", "piper-joe-medium", "kokoro-82m",
                           "resemblyzer-ge2e", "all-MiniLM-L6-v2"]
            assert http.get("/v1/models/beta").json()["max_model_len"] == 512
            r = http.post("/v1/chat/completions", json={"model": "beta", "messages": [
                {"role": "user", "content": "word " * 600}]})
            assert r.status_code == 400 and "512" in r.json()["error"]["message"]
            ok = s.openai().chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=3)
            assert ok.model == "alpha"


def test_models_command_lists_aliases():
    out = omniserve("models").stdout
    assert "smollm2-135m (default)" in out and "qwen2.5-0.5b" in out
    assert "imagenet-ocr (default) [image description]" in out
