"""OpenAI's spec and the peers' behaviour, where omniserve used to differ: typed fields, parameter
checks, echo with logprobs, audio for every choice, and sglang-omni's streamed speech."""

from __future__ import annotations

import base64
import json
import math

import pytest

from tests.audio_helpers import decode
from tests.integration.test_errors import assert_envelope

MSG = [{"role": "user", "content": "Say hello"}]


def sse(http, path: str, body: dict) -> list:
    with http.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def test_system_fingerprint_is_a_string_and_chunks_leave_usage_out(http):
    chat = http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 3}).json()
    text = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3}).json()
    assert chat["system_fingerprint"].startswith("fp_") and chat["system_fingerprint"] == text["system_fingerprint"]
    for path, body in (("/v1/chat/completions", {"messages": MSG}), ("/v1/completions", {"prompt": "Hi"})):
        events = sse(http, path, {**body, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}})
        assert all(isinstance(e["system_fingerprint"], str) for e in events)
        assert all("usage" not in e for e in events[:-1]) and events[-1]["usage"]["completion_tokens"] == 3
        events = sse(http, path, {**body, "max_tokens": 3, "stream": True})
        assert all("usage" not in e for e in events)


@pytest.mark.parametrize("path,body", [("/v1/chat/completions", {"messages": MSG}), ("/v1/completions",
                                                                                      {"prompt": "Hi"})])
def test_stream_options_need_stream_and_seeds_fit_64_bits(http, path, body):
    assert_envelope(http.post(path, json={**body, "stream_options": {"include_usage": True}}), 400,
                    "stream_options", "stream is true")
    for seed in (2**63, -(2**63) - 1):
        assert_envelope(http.post(path, json={**body, "seed": seed}), 400, "seed")
    assert http.post(path, json={**body, "max_tokens": 2, "seed": 2**63 - 1}).status_code == 200


def test_echo_with_logprobs_gives_the_prompts_then_the_completions(http):
    prompt = "The capital of France is"
    r = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 4, "echo": True, "logprobs": 2,
                                           "temperature": 0})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"].startswith(prompt) and "".join(lp["tokens"]) == choice["text"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None  # nothing predicts the first token
    assert all(v <= 0 for v in lp["token_logprobs"][1:]) and len(lp["top_logprobs"][1]) == 2
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    # the prompt's logprobs are the model's: the same as without echo for the completion part
    plain = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 4, "logprobs": 2,
                                               "temperature": 0}).json()["choices"][0]["logprobs"]
    n = len(plain["tokens"])
    assert lp["tokens"][-n:] == plain["tokens"]
    assert all(math.isclose(a, b, abs_tol=0.2) for a, b in zip(lp["token_logprobs"][-n:], plain["token_logprobs"],
                                                               strict=True))


def test_echo_with_logprobs_streams_and_batches(http):
    prompts = ["One two three", "Red green blue"]
    events = sse(http, "/v1/completions", {"prompt": prompts, "n": 2, "max_tokens": 3, "echo": True,
                                           "logprobs": 1, "stream": True})
    by_index: dict[int, list] = {}
    for e in events:
        by_index.setdefault(e["choices"][0]["index"], []).append(e["choices"][0])
    assert sorted(by_index) == [0, 1, 2, 3]
    for index, chunks in by_index.items():
        first = chunks[0]
        assert first["text"] == prompts[index // 2] and first["logprobs"]["token_logprobs"][0] is None
        text = "".join(c["text"] for c in chunks)
        tokens = [t for c in chunks if c["logprobs"] for t in c["logprobs"]["tokens"]]
        assert "".join(tokens) == text
        offsets = [o for c in chunks if c["logprobs"] for o in c["logprobs"]["text_offset"]]
        assert offsets == sorted(offsets) and offsets[0] == 0


def test_audio_out_for_every_choice(http):
    r = http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 12, "n": 2, "seed": 1,
                                                "modalities": ["text", "audio"], "audio": {"format": "wav"}})
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        audio = choice["message"]["audio"]
        assert audio["transcript"] == choice["message"]["content"]
        if choice["message"]["content"].strip():
            assert decode(base64.b64decode(audio["data"]))[1] > 0.2
    ids = [c["message"]["audio"]["id"] for c in r.json()["choices"]]
    assert len(set(ids)) == 2


def test_audio_out_streams_per_choice(http):
    events = sse(http, "/v1/chat/completions", {"messages": MSG, "max_tokens": 12, "n": 2, "stream": True,
                                                "modalities": ["text", "audio"], "audio": {"format": "pcm16"}})
    audio: dict[int, bytes] = {0: b"", 1: b""}
    finished: dict[int, bool] = {}
    for e in events:
        choice = e["choices"][0]
        assert choice["index"] not in finished, "a choice's finish_reason comes after its last audio"
        if choice["delta"].get("audio"):
            audio[choice["index"]] += base64.b64decode(choice["delta"]["audio"]["data"])
        if choice["finish_reason"]:
            finished[choice["index"]] = True
    assert sorted(finished) == [0, 1]
    assert any(len(pcm) > 4000 for pcm in audio.values())


def test_speech_stream_true_is_sglang_omnis_event_stream(http):
    events = sse(http, "/v1/audio/speech", {"input": "One. Two. Three.", "response_format": "wav", "stream": True})
    chunks, last = events[:-1], events[-1]
    assert len(chunks) >= 3 and [c["index"] for c in events] == list(range(len(events)))
    for c in chunks:
        assert c["object"] == "audio.speech.chunk" and c["finish_reason"] is None
        assert c["audio"]["format"] == "wav" and c["audio"]["sample_rate"] == 22050
        rate, seconds, _ = decode(base64.b64decode(c["audio"]["data"]))  # each chunk is a whole file
        assert rate == 22050 and seconds > 0.2
    assert last["audio"] is None and last["finish_reason"] == "stop" and last["usage"]["input_tokens"] == 16


def test_n_is_set_at_the_top_level_only(http):
    """Every stage answers the request's n choices (the talker speaks each): a stage cannot change it."""
    r = http.post("/v1/chat/completions", json={"messages": MSG, "modalities": ["text", "audio"],
                                                "stage_sampling": {"thinker": {"n": 3}}})
    assert_envelope(r, 400, "stage_sampling.thinker.n", "top level")
