"""Realtime sessions over WebRTC (`POST /v1/realtime/calls`) with the default models, through aiortc as a
browser would open one: a question spoken into the microphone track, the answer heard on the server's track
(and not in `response.output_audio.delta` events), barge-in that stops the track, `output_audio_buffer.clear`,
hanging up, and bad offers refused with the error envelope."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.audio_helpers import librivox_clips, normalize, wer
from tests.conftest import idle, wait_until
from tests.integration.test_realtime import text_item
from tests.integration.test_realtime_voice import heard
from tests.realtime_helpers import next_of, receive, send, speech_pcm24k, until
from tests.webrtc_helpers import CallRefused, RtcCall, spoken

SHORT = {"type": "realtime", "max_output_tokens": 48}


def call(server, **kw) -> RtcCall:
    return RtcCall(server.base_url, **kw)


def test_a_spoken_question_gets_an_answer_heard_on_the_track(server, client):
    # greedy: a sampled answer to the question was once one word ("Averted."), too short to check by ear
    with call(server, session={**SHORT, "temperature": 0}) as rtc:
        created = receive(rtc)
        assert created["type"] == "session.created" and created["session"]["max_output_tokens"] == 48
        assert rtc.location.startswith("/v1/realtime/calls/rtc_")
        rtc.say(speech_pcm24k(clip=1, silence_before_s=0.5, silence_after_s=1.0))
        events = until(rtc, "response.done")
        started_at = len(rtc.heard())
        after = until(rtc, "output_audio_buffer.stopped")
        time.sleep(0.3)  # the last packets
        audio = rtc.heard()
    kinds = [e["type"] for e in events + after]
    assert "response.output_audio.delta" not in kinds  # the audio is on the track
    done = events[-1]["response"]
    assert kinds.index("output_audio_buffer.started") < kinds.index("output_audio_buffer.stopped")
    assert {e["response_id"] for e in events + after if e["type"].startswith("output_audio_buffer.")} == {done["id"]}
    transcription = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert wer([librivox_clips()[1][1]], [transcription["transcript"]]) < 0.3, transcription["transcript"]
    assert done["status"] in ("completed", "incomplete")
    transcript = done["output"][0]["content"][0]["transcript"]
    assert len(normalize(transcript).split()) >= 3
    answer = audio[max(0, started_at - 48000 * 3):]  # from a little before the answer began to play
    assert spoken(answer) > 0.5
    said = heard(client, answer)
    assert wer([transcript], [said]) < 0.5, (transcript, said)


def test_barge_in_stops_the_track_and_cuts_the_answer_to_what_was_played(server):
    no_reply = {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad",
                                                                            "create_response": False}}}}
    with call(server, session=no_reply) as rtc:
        receive(rtc)
        send(rtc, text_item("Tell me a long story about a dragon who learns to bake bread."))
        send(rtc, {"type": "response.create", "response": {"instructions": "You tell long stories."}})
        started = next_of(rtc, "output_audio_buffer.started")
        time.sleep(1.0)
        rtc.say(speech_pcm24k(clip=2, silence_before_s=0.0, silence_after_s=1.0))  # the user speaks over it
        events = until(rtc, "output_audio_buffer.cleared")
        cut_at = len(rtc.heard())
        truncated = next_of(rtc, "conversation.item.truncated")
        time.sleep(2.0)
        after = rtc.heard()[cut_at + 24000 * 2 // 2:]  # from half a second after the cut
    kinds = [e["type"] for e in events]
    assert "input_audio_buffer.speech_started" in kinds and events[-1]["response_id"] == started["response_id"]
    done = next(e for e in events if e["type"] == "response.done")["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected"
    assert 0 < truncated["audio_end_ms"]
    assert len(after) > 24000 and spoken(after) == 0  # the track went quiet


def test_speaking_over_an_answer_that_is_written_but_still_playing_stops_it(server):
    no_reply = {"type": "realtime", "max_output_tokens": 40,
                "audio": {"input": {"turn_detection": {"type": "server_vad", "create_response": False}}}}
    with call(server, session=no_reply) as rtc:
        receive(rtc)
        send(rtc, text_item("Tell me about the sea."))
        send(rtc, {"type": "response.create"})
        events = until(rtc, "response.done")  # all written: it plays on, in real time
        done = events[-1]["response"]
        if "output_audio_buffer.started" not in [e["type"] for e in events]:
            next_of(rtc, "output_audio_buffer.started")
        rtc.say(speech_pcm24k(clip=2, silence_before_s=0.0, silence_after_s=1.0))
        cleared = next_of(rtc, "output_audio_buffer.cleared", "output_audio_buffer.stopped")
        assert cleared["type"] == "output_audio_buffer.cleared" and cleared["response_id"] == done["id"]
        truncated = next_of(rtc, "conversation.item.truncated")
        assert truncated["item_id"] == done["output"][0]["id"] and truncated["audio_end_ms"] > 0
        cut_at = len(rtc.heard())
        time.sleep(1.5)
        assert spoken(rtc.heard()[cut_at + 24000:]) == 0


def test_a_turn_that_ends_while_an_answer_is_written_is_an_error_and_the_microphone_still_works(server):
    patient = {"type": "realtime", "max_output_tokens": 24, "audio": {"input": {"turn_detection": {
        "type": "server_vad", "interrupt_response": False}}}}
    with call(server, session=patient) as rtc:
        receive(rtc)
        send(rtc, text_item("Tell me a long story about a dragon."))
        send(rtc, {"type": "response.create", "response": {"max_output_tokens": 400,
                                                           "instructions": "You tell long stories."}})
        next_of(rtc, "response.created")
        rtc.say(speech_pcm24k(clip=1, silence_before_s=0.0, silence_after_s=1.0))
        error = next_of(rtc, "error")["error"]
        assert error["code"] == "conversation_already_has_active_response"
        send(rtc, {"type": "response.cancel"})
        next_of(rtc, "response.done")
        rtc.say(speech_pcm24k(clip=2, silence_before_s=0.5, silence_after_s=1.0))  # heard, and answered
        assert next_of(rtc, "response.done")["response"]["status"] in ("completed", "incomplete")


def test_output_audio_buffer_clear_stops_what_plays(server):
    with call(server) as rtc:
        receive(rtc)
        send(rtc, text_item("Tell me a long story about a dragon."))
        send(rtc, {"type": "response.create", "response": {"instructions": "You tell long stories."}})
        started = next_of(rtc, "output_audio_buffer.started")
        send(rtc, {"type": "response.cancel"})
        send(rtc, {"type": "output_audio_buffer.clear", "event_id": "clear-1"})
        cleared = next_of(rtc, "output_audio_buffer.cleared")
        assert cleared["response_id"] == started["response_id"]
        cut_at = len(rtc.heard())
        time.sleep(1.5)
        assert spoken(rtc.heard()[cut_at + 24000:]) == 0


def test_a_call_that_ends_frees_its_session_and_hangup(server, http):
    rtc = call(server, session=SHORT)
    receive(rtc)
    send(rtc, text_item("Tell me a long story about a dragon."))
    send(rtc, {"type": "response.create"})
    next_of(rtc, "response.output_audio_transcript.delta")
    rtc.close()  # the browser closed the tab mid-answer
    wait_until(lambda: idle(http), 30)
    with call(server) as rtc:
        receive(rtc)
        call_id = rtc.location.rsplit("/", 1)[1]
        assert http.post(f"/v1/realtime/calls/{call_id}/hangup").status_code == 200
        wait_until(lambda: rtc.channel.readyState == "closed" or rtc.pc.connectionState in ("closed", "failed"), 30)
    missing = http.post(f"/v1/realtime/calls/{call_id}/hangup")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "call_not_found"


@pytest.mark.parametrize("send_as, code, param", [
    ({"content": "v=0\r\n", "headers": {"Content-Type": "text/plain"}}, 415, None),
    ({"files": {"session": (None, "{}", "application/json")}}, 400, "sdp"),
    ({"files": {"sdp": (None, "hello", "application/sdp")}}, 400, "sdp"),
    ({"content": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n", "headers": {"Content-Type": "application/sdp"}}, 400, "sdp"),
])
def test_a_bad_offer_is_refused_with_the_error_envelope(server, send_as, code, param):
    r = httpx.post(server.base_url + "/v1/realtime/calls", timeout=30, **send_as)
    assert r.status_code == code, r.text
    error = r.json()["error"]
    assert error["message"] and error["param"] == param


def test_bad_session_settings_are_refused_before_the_call(server):
    with pytest.raises(CallRefused) as caught:
        call(server, session={"type": "realtime", "audio": {"output": {"voice": "nobody"}}})
    r = caught.value.response
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("session.")
    with pytest.raises(CallRefused) as caught:
        call(server, model="no-such-model")
    assert caught.value.response.status_code == 400
    assert caught.value.response.json()["error"]["code"] == "model_not_found"
