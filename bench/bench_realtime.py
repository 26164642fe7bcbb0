"""A spoken turn over `/v1/realtime` against the same turn as one `/v1/chat/completions` request, in one run.

Each turn is a LibriVox sentence (Debian's pocketsphinx-testdata), streamed to a fresh realtime session in
20 ms appends at real-time pace, as a microphone would, with silence after it; server VAD ends the turn
and the answer is spoken by the default models (Whisper -> SmolLM2 -> Piper). The figure is the time from
the end of the user's speech (the last voiced 20 ms of the clip, by energy, as the client sent it) to the
first `response.output_audio.delta`, with where it went: waiting for the VAD's silence, transcribing, and
the thinker and talker up to the first audio.

The chat side sends the same clip whole, as `input_audio`, with the same instructions, `modalities:
["text", "audio"]` and `stream: true`: the time from sending it to the first audio chunk. It has no turn
detection (its client decides when the user has finished), so it is the realtime figure less the VAD.

Streaming quality: each answer's audio underrun, the time a listener playing it in real time from its first
delta would have waited for the next ones (the server exports the same as `omniserve_audio_underrun_seconds`
and `omniserve_audio_continuity_ok`), for one session at a time and for `--sessions` sessions speaking at once.

    python bench/bench_realtime.py                    # 10 turns, OpenAI's default 500 ms of silence
    python bench/bench_realtime.py --silence-ms 200
    python bench/bench_realtime.py --sessions 1 4 8   # the streaming quality of 1, 4 and 8 sessions at once
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
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

from omniserve.api.realtime.settings import DEFAULT_INSTRUCTIONS  # noqa: E402
from omniserve.media.pcm import PCM16, PcmWriter  # noqa: E402
from omniserve.runtime.metrics import Playback  # noqa: E402
from tests.audio_helpers import librivox_clips  # noqa: E402
from tests.realtime_helpers import CHUNK, open_session, receive, send  # noqa: E402

MAX_TOKENS = 48
OUTPUT_RATE = 24000  # the realtime API's pcm16


def speech_end_s(samples: np.ndarray, rate: int) -> float:
    """Where the speech in a clip ends: the end of its last 20 ms frame within 35 dB of the loudest."""
    frame = rate // 50
    frames = samples[: len(samples) // frame * frame].astype(np.float64).reshape(-1, frame)
    rms = np.sqrt((frames ** 2).mean(axis=1)) + 1e-9
    voiced = np.nonzero(20 * np.log10(rms / rms.max()) > -35)[0]
    return (voiced[-1] + 1) * frame / rate


def realtime_turn(base: str, clip: Path, silence_ms: int, lead_s: float = 0.3, tail_s: float = 2.0) -> dict:
    audio, rate = sf.read(clip, dtype="int16")
    end_s = lead_s + speech_end_s(audio, rate)
    pcm = np.concatenate([np.zeros(int(rate * lead_s), np.int16), audio, np.zeros(int(rate * tail_s), np.int16)])
    writer = PcmWriter(PCM16, rate)
    data = writer.write(pcm.tobytes()) + writer.flush()
    marks: dict[str, float] = {}
    playback: list[Playback] = []  # a listener of the answer's audio, from its first delta
    with open_session(base) as ws:
        receive(ws)
        send(ws, {"type": "session.update", "session": {
            "max_output_tokens": MAX_TOKENS,
            "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": silence_ms}}}}})
        receive(ws)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--silence-ms", type=int, default=500, help="server_vad silence_duration_ms")
    parser.add_argument("--sessions", type=int, nargs="*", default=[],
                        help="also measure streaming quality with this many sessions speaking at once")
    args = parser.parse_args()
    clips = [path for path, _ in librivox_clips()]
    port = free_port()
    cmd = [sys.executable, "-m", "omniserve", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(args.threads), "--log-level", "warning"]
    realtime, chat = [], []
    together: dict[int, list[dict]] = {}
    with running("omniserve", cmd, f"http://127.0.0.1:{port}") as base:
        realtime_turn(base, clips[1], args.silence_ms)  # warm up both paths
        chat_turn(base, clips[1])
        for turn in range(args.turns):
            clip = clips[turn % len(clips)]
            realtime.append(realtime_turn(base, clip, args.silence_ms))
            chat.append(chat_turn(base, clip))
            r = realtime[-1]
            print(f"turn {turn + 1:2d} {clip.stem[-4:]}: realtime first audio {r['first_audio_ms']:6.0f} ms "
                  f"(speech_stopped {r['stopped_ms']:4.0f}, transcribed {r['transcribed_ms']:4.0f}, "
                  f"{r['status']})   chat first audio {chat[-1]:6.0f} ms", file=sys.stderr)
        for n in args.sessions:  # n sessions at once, each speaking its own clip, twice
            with ThreadPoolExecutor(n) as pool:
                together[n] = [turn for round_ in range(2) for turn in pool.map(
                    lambda k, r=round_, n=n: realtime_turn(base, clips[(r * n + k) % len(clips)], args.silence_ms),
                    range(n))]

    first = [r["first_audio_ms"] for r in realtime]
    print(f"{args.turns} spoken turns, server_vad silence_duration_ms={args.silence_ms}, {args.threads} threads, "
          f"max {MAX_TOKENS} tokens")
    print("from the end of the user's speech to the first response.output_audio.delta:")
    print(f"  realtime   p50 {pct(first, 50):6.0f} ms   p90 {pct(first, 90):6.0f} ms   (target p50 <= 800 ms)")
    for name, key in [("speech_stopped", "stopped_ms"), ("transcribed", "transcribed_ms")]:
        values = [r[key] for r in realtime]
        print(f"    {name:<15}p50 {pct(values, 50):6.0f} ms   p90 {pct(values, 90):6.0f} ms")
    after = [r["first_audio_ms"] - r["transcribed_ms"] for r in realtime]
    print(f"    then to audio  p50 {pct(after, 50):6.0f} ms   p90 {pct(after, 90):6.0f} ms")
    print("the same turn as one /v1/chat/completions (audio in, streamed audio out), from sending it:")
    print(f"  chat       p50 {pct(chat, 50):6.0f} ms   p90 {pct(chat, 90):6.0f} ms")
    less_vad = statistics.median(f - r["stopped_ms"] for f, r in zip(first, realtime, strict=True))
    print(f"  ratio realtime/chat p50 {pct(first, 50) / pct(chat, 50):.2f}   realtime less its VAD wait p50 "
          f"{less_vad:.0f} ms")
    print("streaming quality: the audio underrun of each answer (a listener playing it from its first delta):")
    for label, turns in [("one session at a time", realtime),
                         *((f"{n} session{'s' * (n > 1)} at once", t) for n, t in together.items())]:
        underrun = [t["underrun_ms"] for t in turns]
        continuous = sum(t["continuous"] for t in turns)
        print(f"  {label:>21}: {len(turns):2d} answers, underrun p50 {pct(underrun, 50):5.0f} ms "
              f"p90 {pct(underrun, 90):5.0f} ms, continuous {continuous}/{len(turns)}, first audio p50 "
              f"{pct([t['first_audio_ms'] for t in turns], 50):5.0f} ms")


if __name__ == "__main__":
    main()
