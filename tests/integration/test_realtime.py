"""`/v1/realtime` over a real WebSocket (the `websockets` client): the API key on the upgrade, the session
and its settings, server-side turn detection on real speech streamed in 20 ms chunks, and error events
that leave the session open."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import idle, run_server, wait_until
from tests.realtime_helpers import next_of, open_session, receive, send, speech_pcm24k, until, ws_url
from tests.webrtc_helpers import CallRefused, RtcCall

KEY = "sk-realtime-test"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with run_server("--asr-model", "none", "--tts-model", "none", "--vision-model", "none", "--embedding-model",
                    "none", "--context-length", "512", tmp_path=tmp_path_factory.mktemp("realtime"), api_key=KEY) as s:
        yield s


def url(server, query: str = "") -> str:
    return ws_url(server.base_url, query)


def session(server, **kw):
    return open_session(server.base_url, KEY, **kw)


def test_the_api_key_is_checked_on_the_upgrade(server):
    with pytest.raises(InvalidStatus) as caught:
        connect(url(server)).close()
    assert caught.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        connect(url(server), additional_headers={"Authorization": "Bearer wrong"}).close()
    # browsers cannot set headers: the key rides as a subprotocol, and the session speaks "realtime"
    with connect(url(server), subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as ws:
        assert ws.subprotocol == "realtime" and receive(ws)["type"] == "session.created"


def test_the_session_and_its_settings(server):
    with session(server) as ws:
        created = receive(ws)
        s = created["session"]
        assert created["type"] == "session.created" and created["event_id"]
        assert s["type"] == "realtime" and s["model"] == "smollm2-135m" and s["output_modalities"] == ["audio"]
        assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert s["audio"]["input"]["turn_detection"] == {
            "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
            "create_response": True, "interrupt_response": True}
        send(ws, {"type": "session.update", "session": {
            "type": "realtime", "instructions": "Be brief.", "output_modalities": ["text"],
            "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.7}},
                      "output": {"voice": "echo", "format": {"type": "audio/pcmu"}}}}})
        updated = receive(ws)["session"]
        assert updated["instructions"] == "Be brief." and updated["output_modalities"] == ["text"]
        assert updated["audio"]["input"]["turn_detection"]["threshold"] == 0.7
        assert updated["audio"]["output"] == {"format": {"type": "audio/pcmu", "rate": 8000}, "voice": "echo",
                                              "speed": 1.0}
        # beta's flat names still work
        send(ws, {"type": "session.update", "session": {"input_audio_format": "g711_alaw", "turn_detection": None,
                                                        "modalities": ["audio", "text"]}})
        updated = receive(ws)["session"]
        assert updated["audio"]["input"]["format"] == {"type": "audio/pcma", "rate": 8000}
        assert updated["audio"]["input"]["turn_detection"] is None and updated["output_modalities"] == ["audio", "text"]


def test_server_vad_hears_a_spoken_sentence_and_commits_it(server):
    audio = speech_pcm24k()
    chunk = 24000 * 2 // 50  # 20 ms of pcm16 at 24 kHz
    with session(server) as ws:
        receive(ws)
        for i in range(0, len(audio), chunk):
            send(ws, {"type": "input_audio_buffer.append", "audio": base64.b64encode(audio[i:i + chunk]).decode()})
        events = [receive(ws) for _ in range(3)]
    started, stopped, committed = events
    assert [e["type"] for e in events] == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                                           "input_audio_buffer.committed"]
    assert 1000 - 300 - 64 <= started["audio_start_ms"] <= 1000 + 400  # speech begins at 1 s, with 300 ms padding
    spoken_ms = len(audio) // 48 - 1500
    assert spoken_ms - 800 <= stopped["audio_end_ms"] <= spoken_ms + 700
    assert started["item_id"] == stopped["item_id"] == committed["item_id"] and committed["previous_item_id"] is None


def test_manual_commit_and_clear_without_turn_detection(server):
    tone = (np.sin(np.arange(12000) / 24000 * 2 * np.pi * 440) * 8000).astype("<i2").tobytes()  # 0.5 s
    with session(server) as ws:
        receive(ws)
        send(ws, {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
        receive(ws)
        send(ws, {"type": "input_audio_buffer.append", "audio": base64.b64encode(tone).decode()})
        send(ws, {"type": "input_audio_buffer.commit"})
        first = receive(ws)
        assert first["type"] == "input_audio_buffer.committed" and first["previous_item_id"] is None
        added = receive(ws)  # the buffer is now a user item
        assert added["type"] == "conversation.item.added" and added["item"]["id"] == first["item_id"]
        assert added["item"]["role"] == "user" and added["item"]["content"][0]["type"] == "input_audio"
        assert receive(ws)["type"] == "conversation.item.done"
        send(ws, {"type": "input_audio_buffer.append", "audio": base64.b64encode(tone).decode()})
        send(ws, {"type": "input_audio_buffer.commit"})
        assert next_of(ws, "input_audio_buffer.committed")["previous_item_id"] == first["item_id"]
        send(ws, {"type": "input_audio_buffer.append", "audio": base64.b64encode(tone).decode()})
        send(ws, {"type": "input_audio_buffer.clear"})
        assert next_of(ws, "input_audio_buffer.cleared")
        send(ws, {"type": "input_audio_buffer.commit", "event_id": "c1"})  # nothing left to commit
        error = receive(ws)
        assert error["type"] == "error" and error["error"]["event_id"] == "c1"


@pytest.mark.parametrize("event, code, param", [
    ({"type": "conversation.dance", "event_id": "e1"}, "invalid_request_error", "type"),
    ({"type": "input_audio_buffer.append", "audio": "not base64!", "event_id": "e1"}, "invalid_base64", "audio"),
    ({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode(), "event_id": "e1"},
     "invalid_audio_format", "audio"),
    ({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/mp3"}}}}, "event_id": "e1"},
     "invalid_request_error", "session.audio.input.format.type"),
    ({"type": "session.update", "session": {"temperature": 9}, "event_id": "e1"}, "invalid_request_error",
     "session.temperature"),
])
def test_a_bad_event_is_an_error_event_and_the_session_goes_on(server, event, code, param):
    with session(server) as ws:
        receive(ws)
        send(ws, event)
        error = receive(ws)
        assert error["type"] == "error", error
        detail = error["error"]
        assert detail["code"] == code and detail["param"] == param and detail["event_id"] == "e1"
        assert error["error"]["message"]
        send(ws, {"type": "session.update", "session": {"instructions": "still here"}})
        assert receive(ws)["session"]["instructions"] == "still here"


def test_text_that_is_not_json_and_an_unknown_model(server):
    with session(server) as ws:
        receive(ws)
        ws.send("hello")
        assert "not valid JSON" in receive(ws)["error"]["message"]
        ws.send(b"\x00\x01")
        assert "binary messages" in receive(ws)["error"]["message"]
        send(ws, {"type": "input_audio_buffer.clear"})
        assert receive(ws)["type"] == "input_audio_buffer.cleared"  # the session goes on
    with connect(url(server, "?model=gpt-nope"), additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        error = receive(ws)
        assert error["type"] == "error" and error["error"]["code"] == "model_not_found"


def text_item(text: str, role: str = "user", **item) -> dict:
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}], **item}}


def test_items_are_added_retrieved_and_deleted(server):
    with session(server) as ws:
        receive(ws)
        send(ws, text_item("first"))
        added = receive(ws)
        assert added["type"] == "conversation.item.added" and added["previous_item_id"] is None
        first = added["item"]
        assert first["role"] == "user" and first["content"] == [{"type": "input_text", "text": "first"}]
        assert first["object"] == "realtime.item" and first["status"] == "completed"
        done = receive(ws)
        assert done["type"] == "conversation.item.done" and done["item"] == first
        send(ws, {**text_item("Be terse.", "system", id="sys1"), "previous_item_id": "root"})
        added = next_of(ws, "conversation.item.added")
        assert added["item"]["id"] == "sys1" and added["previous_item_id"] is None
        send(ws, {"type": "conversation.item.retrieve", "item_id": first["id"]})
        retrieved = next_of(ws, "conversation.item.retrieved")
        assert retrieved["item"] == first
        send(ws, {"type": "conversation.item.delete", "item_id": "sys1"})
        assert receive(ws)["item_id"] == "sys1"
        send(ws, {"type": "conversation.item.retrieve", "item_id": "sys1", "event_id": "r1"})
        error = receive(ws)
        assert error["type"] == "error" and error["error"]["code"] == "item_not_found"
        assert error["error"]["event_id"] == "r1"


@pytest.mark.parametrize("event, code, param", [
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user"}}, "invalid_request_error",
     "item.content"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "assistant",
                                                   "content": [{"type": "input_text", "text": "x"}]}},
     "invalid_request_error", "item.content[0]"),
    ({"type": "conversation.item.create", "item": {"type": "function_call_output", "output": "1"}},
     "invalid_request_error", "item.call_id"),
    ({"type": "conversation.item.create", "previous_item_id": "nope",
      "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}},
     "item_not_found", "previous_item_id"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_audio", "audio": "%%%"}]}}, "invalid_base64", "item.content[0].audio"),
    ({"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0, "audio_end_ms": 10},
     "item_not_found", "item_id"),
    ({"type": "conversation.item.delete", "item_id": "nope"}, "item_not_found", "item_id"),
    ({"type": "response.cancel"}, "response_cancel_not_active", None),
    ({"type": "response.create", "response": {"tools": [{"type": "function", "name": "f"}],
                                              "tool_choice": {"type": "function", "name": "g"}}},
     "invalid_request_error", "response.tool_choice"),
    ({"type": "response.create", "response": {"output_modalities": ["video"]}}, "invalid_request_error",
     "response.output_modalities.0"),
])
def test_a_bad_item_or_response_event_is_an_error_event(server, event, code, param):
    with session(server) as ws:
        receive(ws)
        send(ws, {**event, "event_id": "e2"})
        error = next_of(ws, "error")
        assert error["error"]["code"] == code and error["error"]["param"] == param, error
        assert error["error"]["event_id"] == "e2"
        send(ws, {"type": "input_audio_buffer.clear"})
        assert next_of(ws, "input_audio_buffer.cleared")  # the session goes on


def test_a_text_response_streams_and_a_second_waits_its_turn(server):
    with session(server) as ws:
        receive(ws)
        send(ws, {"type": "session.update", "session": {"output_modalities": ["text"], "max_output_tokens": 24}})
        send(ws, text_item("Name three colors."))
        send(ws, {"type": "response.create"})
        send(ws, {"type": "response.create", "event_id": "r2"})
        events = until(ws, "response.done")
    kinds = [e["type"] for e in events]
    error = next(e for e in events if e["type"] == "error")
    assert error["error"]["code"] == "conversation_already_has_active_response" and error["error"]["event_id"] == "r2"
    order = ["response.created", "response.output_item.added", "response.content_part.added",
             "response.output_text.delta", "response.output_text.done", "response.content_part.done",
             "response.output_item.done", "response.done"]
    assert [k for k in kinds if k in order and k != "response.output_text.delta"] == [
        k for k in order if k != "response.output_text.delta"]
    assert kinds.index("response.output_text.delta") < kinds.index("response.output_text.done")
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text.strip() and text == next(e for e in events if e["type"] == "response.output_text.done")["text"]
    part = next(e for e in events if e["type"] == "response.content_part.added")["part"]
    assert part == {"type": "text", "text": ""}
    done = events[-1]["response"]
    assert done["status"] in ("completed", "incomplete") and done["output"][0]["content"][0]["text"] == text
    assert done["output"][0]["role"] == "assistant" and done["output"][0]["status"] == "completed"
    usage = done["usage"]
    assert 0 < usage["output_tokens"] <= 24 and usage["input_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    if done["status"] == "incomplete":
        assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}


def test_a_response_is_cancelled_and_frees_the_pipeline(server):
    with session(server) as ws, server.http() as http:
        receive(ws)
        send(ws, text_item("Write a long story about a lighthouse keeper."))
        send(ws, {"type": "response.create", "response": {"output_modalities": ["text"], "max_output_tokens": 400}})
        next_of(ws, "response.output_text.delta")
        send(ws, {"type": "response.cancel"})
        events = until(ws, "response.done")
        done = events[-1]["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert done["output"][0]["status"] == "incomplete"
        assert "response.output_text.done" in [e["type"] for e in events]  # what was open is closed
        wait_until(lambda: idle(http))


def test_audio_out_without_a_talker_fails_the_response(server):
    with session(server) as ws:
        receive(ws)
        send(ws, text_item("Hello"))
        send(ws, {"type": "response.create"})  # the session's default: audio
        done = next_of(ws, "response.done")["response"]
        assert done["status"] == "failed" and "text-to-speech" in done["status_details"]["error"]["message"]


def test_a_beta_client_gets_the_beta_event_names(server):
    with open_session(server.base_url, KEY, headers={"OpenAI-Beta": "realtime=v1"}) as ws:
        receive(ws)
        send(ws, text_item("Hi"))
        assert receive(ws)["type"] == "conversation.item.created"
        send(ws, {"type": "response.create", "response": {"modalities": ["text"], "max_response_output_tokens": 8}})
        kinds = [e["type"] for e in until(ws, "response.done")]
    assert "response.text.delta" in kinds and "response.text.done" in kinds
    assert not any(k.startswith("response.output_") and k not in ("response.output_item.added",
                                                                  "response.output_item.done") for k in kinds)


# ---- a conversation longer than the context (this module's server has --context-length 512) ----------------

WORDS = ("the river runs past the old mill where seven green boats wait for the spring rain and the baker sells warm "
         "bread to every sailor who walks up the hill before the morning bell").split()


def converse(ws, truncation, turns: int = 14) -> list[list[dict]]:
    """`turns` user items of ~80 tokens, each answered in text; each turn's events (14 turns: 3.5 contexts)."""
    receive(ws)
    send(ws, {"type": "session.update", "session": {"output_modalities": ["text"], "max_output_tokens": 16,
                                                    "truncation": truncation}})
    assert next_of(ws, "session.updated")["session"]["truncation"] == truncation
    out = []
    for k in range(turns):
        send(ws, text_item(f"Note {k}: " + " ".join(WORDS[(k + i) % len(WORDS)] for i in range(60))))
        send(ws, {"type": "response.create"})
        out.append(until(ws, "response.done"))
    return out


def deletions(turn: list[dict]) -> list[str]:
    return [e["item_id"] for e in turn if e["type"] == "conversation.item.deleted"]


def truncating(turns: list[list[dict]]) -> int:
    return sum(1 for t in turns if deletions(t))


def test_a_conversation_several_times_the_context_drops_its_oldest_items(server):
    with session(server) as ws:
        auto = converse(ws, "auto")
        send(ws, {"type": "conversation.item.retrieve", "item_id": deletions(auto[-1])[0]})
        assert next_of(ws, "error")["error"]["code"] == "item_not_found"  # gone from the conversation
    for turn in auto:
        done = turn[-1]["response"]
        assert done["status"] in ("completed", "incomplete"), done  # answered
        assert done["usage"]["input_tokens"] + 16 <= 512
    added = [e["item"]["id"] for t in auto for e in t if e["type"] == "conversation.item.added"]
    dropped = [d for t in auto for d in deletions(t)]
    assert len(dropped) > 10 and dropped == added[:len(dropped)]  # the oldest first, in order
    assert truncating(auto) >= 8  # past the context, every turn drops some
    with session(server) as ws:  # a retention ratio drops more at once, so less often
        ratio = converse(ws, {"type": "retention_ratio", "retention_ratio": 0.5})
    assert all(t[-1]["response"]["status"] in ("completed", "incomplete") for t in ratio)
    assert 0 < truncating(ratio) <= truncating(auto) / 2


def test_a_token_limit_caps_the_conversation(server):
    with session(server) as ws:
        capped = converse(ws, {"type": "retention_ratio", "retention_ratio": 1.0,
                               "token_limits": {"post_instructions": 200}}, turns=6)
    assert truncating(capped) >= 3
    assert max(t[-1]["response"]["usage"]["input_tokens"] for t in capped) < 200 + 64  # and the instructions


def test_with_truncation_disabled_an_overlong_conversation_fails_and_the_session_goes_on(server):
    with session(server) as ws:
        turns = converse(ws, "disabled", turns=7)
        failed = [t[-1]["response"] for t in turns if t[-1]["response"]["status"] == "failed"]
        assert failed and failed[0]["status_details"]["error"]["code"] == "context_length_exceeded"
        assert not any(deletions(t) for t in turns)
        send(ws, {"type": "session.update", "session": {"truncation": "auto"}})
        next_of(ws, "session.updated")
        send(ws, {"type": "response.create"})
        assert until(ws, "response.done")[-1]["response"]["status"] in ("completed", "incomplete")


@pytest.mark.parametrize("truncation", ["sometimes", {"type": "retention_ratio", "retention_ratio": 1.5},
                                        {"type": "retention_ratio"}])
def test_a_bad_truncation_is_an_error_event(server, truncation):
    with session(server) as ws:
        receive(ws)
        send(ws, {"type": "session.update", "session": {"truncation": truncation}})
        error = next_of(ws, "error")["error"]
        assert error["type"] == "invalid_request_error" and "truncation" in error["message"], error


# ---- client secrets -----------------------------------------------------------------------------------------


def test_a_client_secret_opens_a_session_with_its_settings_and_nothing_else(server):
    with server.http() as http:
        r = http.post("/v1/realtime/client_secrets", json={
            "expires_after": {"anchor": "created_at", "seconds": 120},
            "session": {"type": "realtime", "instructions": "Answer in one word.", "output_modalities": ["text"],
                        "truncation": "disabled"}})
        assert r.status_code == 200, r.text
        secret = r.json()
        assert secret["value"].startswith("ek_") and 100 < secret["expires_at"] - time.time() <= 121
        assert secret["session"]["instructions"] == "Answer in one word." and secret["session"]["type"] == "realtime"
        key = secret["value"]
        # a browser holds the secret instead of the API key: it opens a session that starts with its settings
        with connect(url(server), subprotocols=["realtime", f"openai-insecure-api-key.{key}"]) as ws:
            created = receive(ws)["session"]
            assert created["instructions"] == "Answer in one word." and created["output_modalities"] == ["text"]
            assert created["truncation"] == "disabled"
            send(ws, text_item("Is the sky blue?"))
            send(ws, {"type": "response.create"})
            assert until(ws, "response.done")[-1]["response"]["status"] in ("completed", "incomplete")
        with connect(url(server), additional_headers={"Authorization": f"Bearer {key}"}) as ws:
            assert receive(ws)["type"] == "session.created"
        # and nothing else: not the HTTP API, nor another secret
        as_secret = {"Authorization": f"Bearer {key}"}
        for refused in (http.get("/v1/models", headers=as_secret),
                        http.post("/v1/realtime/client_secrets", json={}, headers=as_secret)):
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key", refused.text
        assert http.post("/v1/realtime/client_secrets", json={}, headers={"Authorization": "Bearer ek_made_up"}
                         ).status_code == 401


def test_output_audio_buffer_clear_is_for_webrtc_calls(server):
    with session(server) as ws:
        receive(ws)
        send(ws, {"type": "output_audio_buffer.clear", "event_id": "c1"})
        error = next_of(ws, "error")["error"]
        assert error["event_id"] == "c1" and "WebRTC" in error["message"]


def test_a_webrtc_call_takes_the_api_key_or_a_client_secret(server):
    with pytest.raises(CallRefused) as caught:
        RtcCall(server.base_url)
    assert caught.value.response.status_code == 401
    with server.http() as http:
        key = http.post("/v1/realtime/client_secrets", json={"session": {
            "type": "realtime", "instructions": "Answer in one word.", "output_modalities": ["text"]}}).json()["value"]
    # a browser's call with the secret: the offer alone (application/sdp), the session from the secret
    with RtcCall(server.base_url, key=key, raw_sdp=True) as rtc:
        created = receive(rtc)["session"]
        assert created["instructions"] == "Answer in one word." and created["output_modalities"] == ["text"]
        send(rtc, text_item("Is the sky blue?"))
        send(rtc, {"type": "response.create"})
        events = until(rtc, "response.done")
        assert events[-1]["response"]["status"] in ("completed", "incomplete")
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert text.strip() and events[-1]["response"]["output"][0]["content"][0]["text"] == text
    # with the API key, the form's `session` sets it up
    with RtcCall(server.base_url, key=KEY, session={"type": "realtime", "instructions": "Be brief."}) as rtc:
        assert receive(rtc)["session"]["instructions"] == "Be brief."


@pytest.mark.parametrize("body, param", [({"expires_after": {"seconds": 5}}, "expires_after.seconds"),
                                          ({"expires_after": {"anchor": "now"}}, "expires_after.anchor"),
                                          ({"session": {"temperature": 5}}, "session.temperature"),
                                          ({"session": {"model": "gpt-9"}}, "session.model"),
                                          ({"session": {"type": "transcription"}}, "session.type")])
def test_a_bad_client_secret_request_is_a_400(server, body, param):
    with server.http() as http:
        r = http.post("/v1/realtime/client_secrets", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
