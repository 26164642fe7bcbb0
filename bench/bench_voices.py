"""The voice models side by side in one run: Kokoro-82M (tts-1-hd) and Piper (tts-1) through omniserve, and
kokoro-onnx in this process as the peer.

- RTF: seconds of work per second of audio for a three-sentence paragraph (the whole response).
- First chunk: time to the first audio byte of a streamed response (`stream_format: audio`).
- Quality: TTS -> Whisper (the server's own whisper-1) WER on 20 Harvard sentences, for four Kokoro voices
  (two US, two British, female and male) and the Piper voice. Target: <= 10%.

Both sides use the same model files and threads; timings are medians of --repeats runs.

    python bench/bench_voices.py --repeats 5
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, http, median_time, running  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.audio_helpers import wer  # noqa: E402

PARAGRAPH = ("The lighthouse keeper climbed the stairs at dusk. He lit the great lamp and watched the ships. "
             "Far away, a storm was gathering over the sea.")
HARVARD = [
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.", "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.", "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.", "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.", "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.", "The girl at the booth sold fifty bonds.",
]
VOICES = [("tts-1-hd", "af_heart"), ("tts-1-hd", "am_michael"), ("tts-1-hd", "bf_emma"), ("tts-1-hd", "bm_george"),
          ("tts-1", "alloy")]


def raw_kokoro(threads: int, repeats: int, data_dir: Path) -> dict[str, float]:
    """kokoro-onnx in this process, on the files the server serves."""
    import onnxruntime
    from kokoro_onnx import Kokoro

    from omniserve.models.kokoro import assemble_model, installed_voices_path

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(assemble_model(data_dir)), sess_options=options,
                                           providers=["CPUExecutionProvider"])
    kokoro = Kokoro.from_session(session, str(installed_voices_path()))
    audio, rate = kokoro.create(PARAGRAPH, voice="af_heart", lang="en-us")
    total = median_time(lambda: kokoro.create(PARAGRAPH, voice="af_heart", lang="en-us"), repeats)
    first = median_time(lambda: kokoro.create("The lighthouse keeper climbed the stairs at dusk.", voice="af_heart",
                                              lang="en-us"), repeats)
    return {"audio_s": len(audio) / rate, "total_s": total, "first_s": first}


def served(base: str, model: str, voice: str, repeats: int) -> dict[str, float]:
    body = {"model": model, "voice": voice, "input": PARAGRAPH, "response_format": "wav"}
    seconds = sf.info(io.BytesIO(http.post(base + "/v1/audio/speech", json=body).content)).duration
    total = median_time(lambda: http.post(base + "/v1/audio/speech", json=body).content, repeats)

    def first_byte() -> None:
        with http.stream("POST", base + "/v1/audio/speech",
                         json={**body, "response_format": "pcm", "stream_format": "audio"}) as r:
            next(r.iter_raw())

    return {"audio_s": seconds, "total_s": total, "first_s": median_time(first_byte, repeats)}


def heard_wer(base: str, model: str, voice: str) -> float:
    heard = []
    for text in HARVARD:
        audio = http.post(base + "/v1/audio/speech", json={"model": model, "voice": voice, "input": text,
                                                           "response_format": "wav"}).content
        r = http.post(base + "/v1/audio/transcriptions", files={"file": ("a.wav", audio)},
                      data={"model": "whisper-1"})
        heard.append(r.json()["text"])
    return wer(HARVARD, heard)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "omniserve")
    args = parser.parse_args()

    raw = raw_kokoro(args.threads, args.repeats, args.data_dir)
    port = free_port()
    cmd = [sys.executable, "-m", "omniserve", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(args.threads), "--log-level", "warning", "--data-dir", str(args.data_dir)]
    with running("omniserve", cmd, f"http://127.0.0.1:{port}") as base:
        started = time.perf_counter()
        speed = {v: served(base, m, v, args.repeats) for m, v in VOICES}
        quality = {v: heard_wer(base, m, v) for m, v in VOICES}
        took = time.perf_counter() - started

    raw_rtf = raw["total_s"] / raw["audio_s"]
    print(f"kokoro-onnx in-process (af_heart): RTF {raw_rtf:.3f}   one sentence {raw['first_s'] * 1000:.0f} ms")
    print(f"{'voice':24} {'RTF':>6} {'vs raw':>7} {'first chunk':>12} {'total':>8} {'WER (20 Harvard)':>17}")
    for model, voice in VOICES:
        s = speed[voice]
        rtf = s["total_s"] / s["audio_s"]
        ratio = f"{rtf / raw_rtf:.2f}x" if model == "tts-1-hd" else "-"
        print(f"{model + ' ' + voice:24} {rtf:6.3f} {ratio:>7} {s['first_s'] * 1000:9.0f} ms {s['total_s']:7.2f}s "
              f"{quality[voice]:16.1%}")
    print(f"(target WER <= 10%; {args.threads} threads, median of {args.repeats}; the served part took {took:.0f} s)")


if __name__ == "__main__":
    main()
