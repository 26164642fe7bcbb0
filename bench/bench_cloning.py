"""Pocket TTS through omniserve against transformers' own `generate` in this process, on a random-weight
checkpoint of the real model's sizes (`scripts/make_tiny_tts.py DIR --size full`: ~100M parameters, the
real codec; its end of speech never fires, so every sentence runs to the frame budget the original gives
its text).

- RTF: seconds of work per second of audio, for one request, and for N requests at once (the server
  batches them per step; transformers runs them as one batch of N). Each side's audio is decoded whole.
- First chunk: time to the first audio byte of a streamed response (`stream_format: audio`); transformers
  has no stream: its first audio is its whole answer.

    python scripts/make_tiny_tts.py /tmp/pocket-full --size full
    python bench/bench_cloning.py /tmp/pocket-full --repeats 3

`--gguf DIR` serves the same model as GGUF through llama.cpp beside it (`scripts/make_tiny_gguf.py DIR --family
pocket_tts --size realistic`: the same sizes, F16) and reports it too, on the same requests:

    python scripts/make_tiny_gguf.py /tmp/pocket-gguf --family pocket_tts --size realistic
    python bench/bench_cloning.py /tmp/pocket-full --gguf /tmp/pocket-gguf --repeats 3
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, http, median_time, running  # noqa: E402

TEXT = "The birch canoe slid on the smooth planks."  # one sentence: one generation on both sides
SAMPLE_RATE = 24000


def reference(checkpoint: Path, threads: int, batch: int, repeats: int) -> dict[str, float]:
    """transformers: generate a batch of `batch` copies of the sentence, then decode it."""
    import torch
    from safetensors.torch import load_file
    from transformers import PocketTTSForConditionalGeneration, PocketTTSProcessor

    torch.set_num_threads(threads)
    processor = PocketTTSProcessor.from_pretrained(checkpoint)
    model = PocketTTSForConditionalGeneration.from_pretrained(checkpoint).eval()
    voice = load_file(checkpoint / "voices" / "alba.safetensors")["audio_prompt_latents"]
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "audio"},
                                                                          {"type": "text", "text": TEXT}]}])
    inputs = processor(text=[prompt] * batch, audio_prompt_latents=[voice] * batch, return_tensors="pt")
    samples = []

    def speak() -> None:
        with torch.no_grad():
            out = model.generate(**inputs)
        samples[:] = [len(w) for w in processor.decode(out.audio_latents, out.audio_latents_mask)]

    seconds = median_time(speak, repeats)
    return {"audio_s": sum(samples) / SAMPLE_RATE, "total_s": seconds}


def served(base: str, model: str, batch: int, repeats: int) -> dict[str, float]:
    body = {"model": model, "voice": "alba", "input": TEXT, "response_format": "pcm"}
    sizes = []

    def speak() -> None:
        with ThreadPoolExecutor(batch) as pool:
            sizes[:] = list(pool.map(lambda i: len(http.post(base + "/v1/audio/speech",
                                                               json={**body, "seed": i}).content), range(batch)))

    seconds = median_time(speak, repeats)

    def first_byte() -> None:
        with http.stream("POST", base + "/v1/audio/speech", json={**body, "stream_format": "audio"}) as r:
            next(r.iter_raw())

    first = median_time(first_byte, repeats) if batch == 1 else float("nan")
    return {"audio_s": sum(sizes) / 2 / SAMPLE_RATE, "total_s": seconds, "first_s": first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--gguf", type=Path, help="a Pocket TTS GGUF folder of the same sizes, served beside it")
    args = parser.parse_args()

    peer = {b: reference(args.checkpoint, args.threads, b, args.repeats) for b in args.batches}
    port = free_port()
    cmd = [sys.executable, "-m", "omniserve", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(args.threads), "--log-level", "warning", "--tts-model", str(args.checkpoint),
           *([str(args.gguf)] if args.gguf else []),
           "--asr-model", "none", "--vision-model", "none", "--embedding-model", "none"]
    models = {"omniserve": args.checkpoint.resolve().name}
    if args.gguf:
        models["omniserve GGUF"] = args.gguf.resolve().name
    with running("omniserve", cmd, f"http://127.0.0.1:{port}", timeout=300) as base:
        results = {}
        for label, model in models.items():
            served(base, model, 1, 1)  # warm
            results[label] = {b: served(base, model, b, args.repeats) for b in args.batches}

    print(f"Pocket TTS, random weights at the real sizes; {args.threads} threads, median of {args.repeats}")
    for label, ours in results.items():
        print(f"{'requests':>8} {'audio':>7} {label + ' RTF':>19} {'transformers RTF':>17} {'ratio':>6} "
              f"{'first chunk':>12} {'transformers first audio':>25}")
        for b in args.batches:
            o, p = ours[b], peer[b]
            rtf_o, rtf_p = o["total_s"] / o["audio_s"], p["total_s"] / p["audio_s"]
            first = f"{o['first_s'] * 1000:.0f} ms" if b == 1 else "-"
            peer_first = f"{p['total_s'] * 1000:.0f} ms" if b == 1 else "-"
            print(f"{b:8d} {o['audio_s']:6.1f}s {rtf_o:19.3f} {rtf_p:17.3f} {rtf_p / rtf_o:5.2f}x {first:>12} "
                  f"{peer_first:>25}")
    print("(ratio: transformers' RTF / omniserve's; above 1, omniserve is faster)")


if __name__ == "__main__":
    main()
