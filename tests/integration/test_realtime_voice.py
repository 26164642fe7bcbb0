"""Spoken conversations over `/v1/realtime` with the default models (Whisper -> SmolLM2 -> Piper), through
raw `websockets` and the official `openai` SDK's realtime client: a question spoken at real-time pace,
server VAD ending the turn, its transcript, and an answer whose audio says its transcript; tool calls;
barge-in; several sessions at once; and a socket closed in the middle of an answer."""

from __future__ import annotations

import base64
import io
import json
import threading

import numpy as np
import soundfile as sf

from tests.audio_helpers import librivox_clips, normalize, wer
from tests.conftest import idle, wait_until
from tests.integration.test_metrics import scrape, value
from tests.integration.test_realtime import text_item
from tests.media_helpers import photo_url
from tests.realtime_helpers import append_audio, audio_of, next_of, open_session, receive, send, speech_pcm24k, until

SHORT = {"type": "session.update", "session": {"max_output_tokens": 48}}


def heard(client, pcm24k: bytes) -> str:
    """What Whisper (the server's own) hears in an answer's pcm16 audio."""
    wav = io.BytesIO()
    sf.write(wav, np.frombuffer(pcm24k, "<i2"), 24000, format="WAV", subtype="PCM_16")
    return client.audio.transcriptions.create(model="whisper-1", file=("answer.wav", wav.getvalue())).text


def test_a_spoken_question_gets_a_spoken_answer(server, client):
    with open_session(server.base_url) as ws:
        receive(ws)
        send(ws, SHORT)
        receive(ws)
        append_audio(ws, speech_pcm24k(clip=1, silence_before_s=0.5, silence_after_s=1.0))
        events = until(ws, "response.done")
    kinds = [e["type"] for e in events]
    for before, after in [("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"),
                          ("input_audio_buffer.speech_stopped", "input_audio_buffer.committed"),
                          ("input_audio_buffer.committed", "conversation.item.added"),
                          ("conversation.item.input_audio_transcription.completed", "response.output_item.added"),
                          ("response.created", "response.content_part.added"),
                          ("response.output_audio_transcript.delta", "response.output_audio_transcript.done"),
                          ("response.output_audio.delta", "response.output_audio.done"),
                          ("response.output_audio.done", "response.content_part.done"),
                          ("response.content_part.done", "response.output_item.done")]:
        assert kinds.index(before) < kinds.index(after), (before, after, kinds)
    transcription = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    reference = librivox_clips()[1][1]
    assert wer([reference], [transcription["transcript"]]) < 0.3, transcription["transcript"]
    done = events[-1]["response"]
    assert done["status"] in ("completed", "incomplete") and done["usage"]["output_tokens"] > 0
    assert done["usage"]["input_tokens"] > len(reference.split())  # the thinker read the transcript
    transcript = next(e for e in events if e["type"] == "response.output_audio_transcript.done")["transcript"]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
    assert deltas == transcript and len(normalize(transcript).split()) >= 3
    assert done["output"][0]["content"][0] == {"type": "output_audio", "transcript": transcript}
    audio = audio_of(events)
    assert len(audio) / 48000 > 0.5  # seconds of pcm16 at 24 kHz
    said = heard(client, audio)
    assert wer([transcript], [said]) < 0.5, (transcript, said)


def test_text_and_audio_through_the_openai_sdk(server, client):
    with client.realtime.connect(model="smollm2-135m") as conn:
        assert conn.recv().type == "session.created"
        conn.session.update(session={"type": "realtime", "output_modalities": ["text"], "max_output_tokens": 32})
        conn.conversation.item.create(item={"type": "message", "role": "user",
                                            "content": [{"type": "input_text", "text": "Say hello to Anna."}]})
        conn.response.create()
        text, done = "", None
        for event in conn:
            if event.type == "response.output_text.delta":
                text += event.delta
            if event.type == "response.done":
                done = event.response
                break
        assert done.status in ("completed", "incomplete") and text.strip()
        assert done.output[0].content[0].text == text
        conn.response.create(response={"output_modalities": ["audio"], "instructions": "Answer in one sentence."})
        audio, transcript = b"", ""
        for event in conn:
            if event.type == "response.output_audio.delta":
                audio += base64.b64decode(event.delta)
            if event.type == "response.output_audio_transcript.done":
                transcript = event.transcript
            if event.type == "response.done":
                assert event.response.status in ("completed", "incomplete")
                break
    assert transcript.strip() and len(audio) > 24000


def test_a_tool_call_round_trip(server):
    weather = {"type": "function", "name": "get_weather", "description": "The weather in a city now.",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    with open_session(server.base_url) as ws:
        receive(ws)
        send(ws, {"type": "session.update", "session": {"tools": [weather], "tool_choice": "required",
                                                        "max_output_tokens": 64}})
        assert receive(ws)["session"]["tools"][0]["name"] == "get_weather"
        send(ws, text_item("What is the weather in Paris right now?"))
        send(ws, {"type": "response.create"})
        events = until(ws, "response.done")
        args = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert args["name"] == "get_weather" and isinstance(json.loads(args["arguments"])["city"], str)
        call = events[-1]["response"]["output"][0]
        assert call["type"] == "function_call" and call["call_id"] == args["call_id"]
        assert "response.output_audio.delta" not in [e["type"] for e in events]  # a call is not spoken
        send(ws, {"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": args["call_id"],
            "output": json.dumps({"city": "Paris", "sky": "sunny", "temperature_c": 21})}})
        send(ws, {"type": "response.create", "response": {"tool_choice": "none"}})
        events = until(ws, "response.done")
    answer = events[-1]["response"]
    assert answer["status"] in ("completed", "incomplete") and answer["output"][0]["role"] == "assistant"
    assert answer["output"][0]["content"][0]["transcript"].strip() and audio_of(events)


def test_barge_in_cancels_the_answer_and_cuts_it_to_what_was_played(server):
    with open_session(server.base_url) as ws:
        receive(ws)
        send(ws, {"type": "session.update", "session": {"instructions": "You tell long stories."}})
        send(ws, text_item("Tell me a long story about a dragon who learns to bake bread."))
        send(ws, {"type": "response.create"})
        first = next_of(ws, "response.output_audio.delta")
        spoken = first["item_id"]
        # the answer to the next turn needs only to begin (its story ran on for 90 s); this one keeps its "inf"
        send(ws, {"type": "session.update", "session": {"max_output_tokens": 48}})
        append_audio(ws, speech_pcm24k(clip=2, silence_before_s=0.2, silence_after_s=1.0))  # the user speaks over it
        events = until(ws, "response.done")
        kinds = [e["type"] for e in events]
        assert kinds.index("input_audio_buffer.speech_started") < len(kinds) - 1
        done = events[-1]["response"]
        assert done["id"] == first["response_id"] and done["status"] == "cancelled"
        assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
        sent_ms = (len(audio_of([first, *events]))) / 48
        truncated = next_of(ws, "conversation.item.truncated")
        assert truncated["item_id"] == spoken and 0 <= truncated["audio_end_ms"] < sent_ms
        # the next answer is to the new turn; the cut answer keeps only what was heard
        after = until(ws, "response.done")
        assert after[-1]["response"]["id"] != done["id"]
        assert not [e for e in after if e.get("response_id") == done["id"]]  # its audio stopped
        send(ws, {"type": "conversation.item.retrieve", "item_id": spoken})
        kept = next_of(ws, "conversation.item.retrieved")["item"]["content"][0]["transcript"]
        full = done["output"][0]["content"][0]["transcript"]
        assert len(kept) < len(full) and full.startswith(kept.split(" ")[0] if kept else "")


def test_three_sessions_at_once_and_all_is_freed(server, http):
    results: dict[int, dict] = {}

    def talk(k: int) -> None:
        with open_session(server.base_url) as ws:
            receive(ws)
            send(ws, {"type": "session.update", "session": {"max_output_tokens": 24}})
            send(ws, text_item(["Hello!", "What is a cat?", "Name a color."][k]))
            send(ws, {"type": "response.create"})
            events = until(ws, "response.done", timeout=180)
            results[k] = {"done": events[-1]["response"], "audio": len(audio_of(events))}

    threads = [threading.Thread(target=talk, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sorted(results) == [0, 1, 2]
    for r in results.values():
        assert r["done"]["status"] in ("completed", "incomplete") and r["audio"] > 0
    wait_until(lambda: idle(http))


def test_a_socket_closed_in_the_middle_of_an_answer_frees_everything(server, http):
    with open_session(server.base_url) as ws:
        receive(ws)
        send(ws, text_item("Tell me a very long story about the sea."))
        send(ws, {"type": "response.create", "response": {"instructions": "You tell long stories."}})
        next_of(ws, "response.output_audio.delta")
        assert not idle(http)
    wait_until(lambda: idle(http))


def test_truncate_and_voice_errors(server):
    with open_session(server.base_url) as ws:
        receive(ws)
        send(ws, {"type": "session.update", "session": {"audio": {"output": {"voice": "nobody"}}}, "event_id": "v"})
        error = receive(ws)["error"]
        assert error["param"] == "session.audio.output.voice" and "valid voices" in error["message"]
        send(ws, text_item("Say something nice."))
        send(ws, {"type": "response.create", "response": {"max_output_tokens": 24}})
        done = next_of(ws, "response.done")["response"]
        item = done["output"][0]
        send(ws, {"type": "conversation.item.truncate", "item_id": item["id"], "content_index": 0,
                  "audio_end_ms": 10 ** 7, "event_id": "t"})
        error = receive(ws)["error"]
        assert error["param"] == "audio_end_ms" and error["event_id"] == "t"
        send(ws, {"type": "conversation.item.truncate", "item_id": item["id"], "content_index": 0,
                  "audio_end_ms": 0})
        truncated = receive(ws)
        assert truncated["type"] == "conversation.item.truncated" and truncated["audio_end_ms"] == 0
        send(ws, {"type": "conversation.item.retrieve", "item_id": item["id"]})
        assert receive(ws)["item"]["content"][0]["transcript"] == ""  # nothing was heard


def test_an_image_in_a_user_item_reaches_the_vision_stage(server):
    with open_session(server.base_url) as ws:
        receive(ws)
        send(ws, {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
            {"type": "input_image", "image_url": photo_url("chelsea.png")},
            {"type": "input_text", "text": "What animal is this?"}]}})
        send(ws, {"type": "response.create", "response": {"output_modalities": ["text"], "temperature": 0,
                                                          "max_output_tokens": 40}})
        done = next_of(ws, "response.done")["response"]
    assert "cat" in done["output"][0]["content"][0]["text"].lower()


def test_the_answer_is_begun_at_the_pause_and_dropped_when_the_speaker_goes_on(server, http):
    """A long pause within a turn begins an answer that is dropped when speech resumes; the pause that ends
    the turn begins the one the response takes. The answer is to the whole turn, once."""
    before = scrape(http)
    first, second = (np.frombuffer(speech_pcm24k(clip=k, silence_before_s=0, silence_after_s=0), "<i2")
                     for k in (1, 4))
    gap, tail = np.zeros(24000, np.int16), np.zeros(24000 * 2, np.int16)  # 1 s inside the turn, 2 s after it
    with open_session(server.base_url) as ws:
        receive(ws)
        # 1.5 s of silence ends the turn: room for the answer to be begun however slow this machine is
        send(ws, {"type": "session.update", "session": {"max_output_tokens": 24, "audio": {"input": {
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 1500}}}}})
        receive(ws)
        append_audio(ws, np.concatenate([gap, first, gap, second, tail]).tobytes())
        events = until(ws, "response.done")
    assert [e["type"] for e in events].count("input_audio_buffer.committed") == 1
    transcript = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    clips = librivox_clips()
    assert wer([f"{clips[1][1]} {clips[4][1]}"], [transcript["transcript"]]) < 0.3, transcript["transcript"]
    done = events[-1]["response"]
    assert done["status"] in ("completed", "incomplete") and audio_of(events)
    assert done["usage"]["input_tokens"] > len(f"{clips[1][1]} {clips[4][1]}".split())  # it read the whole turn
    after = scrape(http)
    begun = {o: value(after, "omniserve_realtime_answers_ahead_total", outcome=o) -
             value(before, "omniserve_realtime_answers_ahead_total", outcome=o) for o in ("taken", "dropped")}
    assert begun["taken"] == 1 and begun["dropped"] >= 1, begun
