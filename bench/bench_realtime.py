"""A spoken turn over `/v1/realtime` (WebSocket) and `/v1/realtime/calls` (WebRTC) against the same turn as one
`/v1/chat/completions` request, in one run.

Each turn is a LibriVox sentence (Debian's pocketsphinx-testdata), streamed at real-time pace in 20 ms appends,
as a microphone would, with silence after it; server VAD ends the turn and the answer is spoken by the default
models (Whisper -> SmolLM2 -> Piper). The figure is the time from the end of the user's speech (the last voiced
20 ms of the clip, by energy, as the client sent it) to the first `response.output_audio.delta`. It is measured
over `--turns` turns in one session (a conversation whose prompt grows: later turns must not be slower) and over
as many fresh sessions.

Where the time goes, per turn: the VAD's wait for `silence_duration_ms` of quiet (speech_stopped), and, from the
server's /metrics for the turn's requests, speech to text (asr), the thinker's time to its first token
(prefill), and the pipeline's time to its first audio (first words, then the talker's first chunk). The answer
is begun at the speaker's pause, so that work hides in the VAD's wait when it is short enough: `ahead` counts
the turns whose response took an answer begun ahead.

The chat side sends the same clip whole, as `input_audio`, with the same instructions, `modalities:
["text", "audio"]` and `stream: true`: the time from sending it to the first audio chunk. It has no turn
detection (its client decides when the user has finished).

Over WebRTC (an aiortc client, as a browser opens a call) the clip goes out on the microphone track at real-time
pace, and the figure is from the end of its speech (the microphone's first frame of the clip, plus where the speech
ends in it) to the first frame of the server's track that is not silence, as the client received it: so it holds
Opus both ways and the client's jitter buffer.

Streaming quality: each answer's audio underrun, the time a listener playing it in real time from its first
delta would have waited for the next ones (the server exports the same as `omniserve_audio_underrun_seconds`
and `omniserve_audio_continuity_ok`), for one session at a time and for `--sessions` sessions speaking at once.

    python bench/bench_realtime.py                    # 10 turns, OpenAI's default 500 ms of silence
    python bench/bench_realtime.py --silence-ms 200
    python bench/bench_realtime.py --sessions 1 4 8   # the streaming quality of 1, 4 and 8 sessions at once
    python bench/bench_realtime.py --transports webrtc
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import free_port, http, running  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from omniserve.api.realtime.settings import DEFAULT_INSTRUCTIONS  # noqa: E402
from omniserve.media.pcm import PCM16, PcmWriter  # noqa: E402
from omniserve.runtime.metrics import Playback  # noqa: E402
from tests.audio_helpers import librivox_clips  # noqa: E402
from tests.realtime_helpers import CHUNK, open_session, receive, send, until  # noqa: E402
from tests.webrtc_helpers import RtcCall  # noqa: E402

MAX_TOKENS = 48
OUTPUT_RATE = 24000  # the realtime API's pcm16


def speech_end_s(samples: np.ndarray, rate: int) -> float:
    """Where the speech in a clip ends: the end of its last 20 ms frame within 35 dB of the loudest."""
    frame = rate // 50
    frames = samples[: len(samples) // frame * frame].astype(np.float64).reshape(-1, frame)
    rms = np.sqrt((frames ** 2).mean(axis=1)) + 1e-9
    voiced = np.nonzero(20 * np.log10(rms / rms.max()) > -35)[0]
    return (voiced[-1] + 1) * frame / rate


def configure(ws, silence_ms: int) -> None:
    receive(ws)
    send(ws, {"type": "session.update", "session": {
        "max_output_tokens": MAX_TOKENS,
        "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": silence_ms}}}}})
    receive(ws)


def utterance(clip: Path, lead_s: float = 0.3, tail_s: float = 2.0) -> tuple[bytes, float]:
    """A clip with silence around it as pcm16 at 24 kHz, and where its speech ends in it (s)."""
    audio, rate = sf.read(clip, dtype="int16")
    pcm = np.concatenate([np.zeros(int(rate * lead_s), np.int16), audio, np.zeros(int(rate * tail_s), np.int16)])
    writer = PcmWriter(PCM16, rate)
    return writer.write(pcm.tobytes()) + writer.flush(), lead_s + speech_end_s(audio, rate)


def speak(ws, clip: Path) -> dict:
    """One spoken turn on an open session, at real-time pace, until its response is done."""
    data, end_s = utterance(clip)
    marks: dict[str, float] = {}
    playback: list[Playback] = []  # a listener of the answer's audio, from its first delta

    def listen() -> None:
        while True:
            event = receive(ws, timeout=120)
            kind = event["type"]
            now = time.monotonic()
            marks.setdefault(kind, now)
            if kind == "response.output_audio.delta":
                if not playback:
                    playback.append(Playback(now))
                playback[0].heard(now, len(base64.b64decode(event["delta"])) / 2 / OUTPUT_RATE)
            if kind == "response.done":
                marks["status"] = event["response"]["status"]
                return

    listener = threading.Thread(target=listen)
    listener.start()
    start = time.monotonic()
    for k, i in enumerate(range(0, len(data), CHUNK)):
        if "response.done" in marks:
            break
        send(ws, {"type": "input_audio_buffer.append", "audio": base64.b64encode(data[i:i + CHUNK]).decode()})
        time.sleep(max(0.0, start + (k + 1) * 0.02 - time.monotonic()))
    listener.join(120)
    spoken = start + end_s

    def since(kind: str) -> float:
        return (marks[kind] - spoken) * 1000 if kind in marks else float("nan")

    return {"first_audio_ms": since("response.output_audio.delta"),
            "stopped_ms": since("input_audio_buffer.speech_stopped"),
            "transcribed_ms": since("conversation.item.input_audio_transcription.completed"),
            "status": marks.get("status"),
            "underrun_ms": playback[0].underrun * 1000 if playback else float("nan"),
            "continuous": bool(playback) and playback[0].continuous}


def speak_rtc(call: RtcCall, clip: Path) -> dict:
    """One spoken turn on an open WebRTC call: the clip on the microphone track, until its answer has played."""
    data, end_s = utterance(clip)
    call.say(data)
    events = until(call, "response.done", timeout=120)
    marks = {e["type"]: call.arrived[e["event_id"]] for e in reversed(events)}
    if events[-1]["response"]["output"]:  # the answer plays on in real time after response.done
        until(call, "output_audio_buffer.stopped", timeout=120)
    spoken = call.microphone.began + end_s

    def since(kind: str) -> float:
        return (marks[kind] - spoken) * 1000 if kind in marks else float("nan")

    first = next((t for t in call.loud_at if t > spoken), float("nan"))
    return {"first_audio_ms": (first - spoken) * 1000, "stopped_ms": since("input_audio_buffer.speech_stopped"),
            "started_ms": since("output_audio_buffer.started"),
            "transcribed_ms": since("conversation.item.input_audio_transcription.completed"),
            "status": events[-1]["response"]["status"], "underrun_ms": float("nan"), "continuous": False}


def open_call(base: str, silence_ms: int) -> RtcCall:
    call = RtcCall(base, session={"type": "realtime", "max_output_tokens": MAX_TOKENS, "audio": {"input": {
        "turn_detection": {"type": "server_vad", "silence_duration_ms": silence_ms}}}})
    receive(call)
    return call


def realtime_turn(base: str, clip: Path, silence_ms: int, transport: str = "websocket") -> dict:
    """A turn in a fresh session."""
    if transport == "webrtc":
        with open_call(base, silence_ms) as call:
            return speak_rtc(call, clip)
    with open_session(base) as ws:
        configure(ws, silence_ms)
        return speak(ws, clip)


# ---- where the time went, from the server's /metrics ------------------------------------------------------

STAGE_TIMES = {"asr": ("omniserve_e2e_request_latency_seconds", "asr"),
               "prefill": ("omniserve_time_to_first_token_seconds", "thinker"),
               "first audio": ("omniserve_time_to_first_audio_seconds", "talker")}


def scrape(base: str) -> dict[tuple[str, str], float]:
    """(sample name, stage) -> value, summed over the stage's labels (a talker stage per voice model)."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(http.get(base + "/metrics").text):
        for sample in family.samples:
            stage = sample.labels.get("stage") or sample.labels.get("outcome", "")
            stage = "talker" if stage.startswith("talker") else stage
            out[(sample.name, stage)] = out.get((sample.name, stage), 0.0) + sample.value
    return out


def stage_times(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per request of each stage's figure between two scrapes, and the answers taken ahead."""
    times = {}
    for label, (name, stage) in STAGE_TIMES.items():
        count = after.get((f"{name}_count", stage), 0) - before.get((f"{name}_count", stage), 0)
        total = after.get((f"{name}_sum", stage), 0) - before.get((f"{name}_sum", stage), 0)
        times[label] = total / count * 1000 if count else float("nan")
    key = ("omniserve_realtime_answers_ahead_total", "taken")
    times["ahead"] = after.get(key, 0) - before.get(key, 0)
    return times


def measured(base: str, turn) -> dict:
    before = scrape(base)
    result = turn()
    return {**result, **stage_times(before, scrape(base))}


def chat_turn(base: str, clip: Path) -> float:
    wav = base64.b64encode(clip.read_bytes()).decode()
    body = {"messages": [{"role": "system", "content": DEFAULT_INSTRUCTIONS},
                         {"role": "user", "content": [{"type": "input_audio",
                                                       "input_audio": {"data": wav, "format": "wav"}}]}],
            "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"},
            "max_tokens": MAX_TOKENS, "stream": True}
    start = time.monotonic()
    first = None
    with http.stream("POST", base + "/v1/chat/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if first is None and line.startswith("data: {") and json.loads(line[6:])["choices"] and \
                    json.loads(line[6:])["choices"][0]["delta"].get("audio", {}).get("data"):
                first = time.monotonic()
    return (first - start) * 1000 if first else float("nan")


def pct(values: list[float], q: float) -> float:
    values = sorted(v for v in values if v == v)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else float("nan")


def report(label: str, turns: list[dict]) -> None:
    first = [r["first_audio_ms"] for r in turns]
    ahead = sum(r["ahead"] for r in turns)
    print(f"  {label:<22} p50 {pct(first, 50):6.0f} ms   p90 {pct(first, 90):6.0f} ms   (target p50 <= 500, p90 <= 700;"
          f" {ahead:.0f}/{len(turns)} answers begun ahead)")
    half = len(turns) // 2
    if label.startswith("one session") and half:
        print(f"    {'first half, second':<20} p50 {pct(first[:half], 50):6.0f} ms, {pct(first[half:], 50):6.0f} ms")
    print(f"    {'speech_stopped (VAD)':<20} p50 {pct([r['stopped_ms'] for r in turns], 50):6.0f} ms   "
          f"p90 {pct([r['stopped_ms'] for r in turns], 90):6.0f} ms")
    if "started_ms" in turns[0]:  # WebRTC: when the server said its track began the answer
        print(f"    {'buffer.started event':<20} p50 {pct([r['started_ms'] for r in turns], 50):6.0f} ms   "
              f"p90 {pct([r['started_ms'] for r in turns], 90):6.0f} ms")
    after = [r["first_audio_ms"] - r["stopped_ms"] for r in turns]
    print(f"    {'then to audio':<20} p50 {pct(after, 50):6.0f} ms   p90 {pct(after, 90):6.0f} ms")
    for name in STAGE_TIMES:
        values = [r[name] for r in turns]
        print(f"    {name + ' (server)':<20} p50 {pct(values, 50):6.0f} ms   p90 {pct(values, 90):6.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--silence-ms", type=int, default=500, help="server_vad silence_duration_ms")
    parser.add_argument("--sessions", type=int, nargs="*", default=[],
                        help="also measure streaming quality with this many sessions speaking at once")
    parser.add_argument("--transports", nargs="+", choices=["websocket", "webrtc"], default=["websocket", "webrtc"])
    args = parser.parse_args()
    clips = [path for path, _ in librivox_clips()]
    port = free_port()
    cmd = [sys.executable, "-m", "omniserve", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(args.threads), "--log-level", "warning"]
    conversation: dict[str, list[dict]] = {t: [] for t in args.transports}
    fresh: dict[str, list[dict]] = {t: [] for t in args.transports}
    chat: list[dict] = []
    together: dict[int, list[dict]] = {}
    with running("omniserve", cmd, f"http://127.0.0.1:{port}") as base:
        for transport in args.transports:  # warm up every path
            realtime_turn(base, clips[1], args.silence_ms, transport)
        chat_turn(base, clips[1])
        for transport in args.transports:  # one conversation: each turn's prompt holds the ones before
            with (open_call(base, args.silence_ms) if transport == "webrtc" else open_session(base)) as session:
                if transport == "websocket":
                    configure(session, args.silence_ms)
                for turn in range(args.turns):
                    clip = clips[turn % len(clips)]
                    say = speak_rtc if transport == "webrtc" else speak
                    conversation[transport].append(measured(base, lambda c=clip, f=say, s=session: f(s, c)))
                    show(f"one session ({transport})", turn, clip, conversation[transport][-1])
        for turn in range(args.turns):
            clip = clips[turn % len(clips)]
            for transport in args.transports:
                fresh[transport].append(measured(base, lambda c=clip, t=transport: realtime_turn(
                    base, c, args.silence_ms, t)))
                show(f"fresh session ({transport})", turn, clip, fresh[transport][-1])
            chat.append(measured(base, lambda c=clip: {"first_audio_ms": chat_turn(base, c)}))
        for n in args.sessions:  # n sessions at once, each speaking its own clip, twice
            with ThreadPoolExecutor(n) as pool:
                together[n] = [turn for round_ in range(2) for turn in pool.map(
                    lambda k, r=round_, n=n: realtime_turn(base, clips[(r * n + k) % len(clips)], args.silence_ms),
                    range(n))]

    print(f"{args.turns} spoken turns, server_vad silence_duration_ms={args.silence_ms}, {args.threads} threads, "
          f"max {MAX_TOKENS} tokens")
    for transport in args.transports:
        what = ("the first frame of the server's track that is not silence" if transport == "webrtc"
                else "the first response.output_audio.delta")
        print(f"from the end of the user's speech to {what} ({transport}):")
        report(f"one session, {args.turns} turns", conversation[transport])
        report("fresh sessions", fresh[transport])
    print("the same turn as one /v1/chat/completions (audio in, streamed audio out), from sending it:")
    first = [c["first_audio_ms"] for c in chat]
    print(f"  {'chat':<22} p50 {pct(first, 50):6.0f} ms   p90 {pct(first, 90):6.0f} ms")
    for name, label in [("prefill", "asr + prefill"), ("first audio", "first audio")]:  # its ASR is in its prompt
        values = [r[name] for r in chat]
        print(f"    {label + ' (server)':<20} p50 {pct(values, 50):6.0f} ms   p90 {pct(values, 90):6.0f} ms")
    print("streaming quality (WebSocket): the audio underrun of each answer (a listener playing it from its first "
          "delta):")
    for label, turns in [("one session at a time", fresh.get("websocket", [])),
                         *((f"{n} session{'s' * (n > 1)} at once", t) for n, t in together.items())]:
        underrun = [t["underrun_ms"] for t in turns]
        continuous = sum(t["continuous"] for t in turns)
        print(f"  {label:>21}: {len(turns):2d} answers, underrun p50 {pct(underrun, 50):5.0f} ms "
              f"p90 {pct(underrun, 90):5.0f} ms, continuous {continuous}/{len(turns)}, first audio p50 "
              f"{pct([t['first_audio_ms'] for t in turns], 50):5.0f} ms")


def show(label: str, turn: int, clip: Path, r: dict) -> None:
    print(f"{label} turn {turn + 1:2d} {clip.stem[-4:]}: first audio {r['first_audio_ms']:5.0f} ms (speech_stopped "
          f"{r['stopped_ms']:4.0f}, transcribed {r['transcribed_ms']:4.0f}; server: asr {r['asr']:4.0f}, prefill "
          f"{r['prefill']:4.0f}, first audio {r['first audio']:4.0f}; ahead {r['ahead']:.0f}; {r['status']})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
