"""A spoken question answered two ways by one GGUF thinker: the cascade (Whisper transcribes the audio, the thinker
reads the transcript) and the thinker that hears (`--mmproj`: its own audio encoder, through libmtmd).

For each, at 1 and 4 concurrent requests, each a streamed chat request with the same LibriVox clip and
`max_tokens` tokens (EOS ignored): time to the first token (p50), and tokens per second over all requests. The two
servers run one after the other, never at once.

    python scripts/make_tiny_gguf.py /tmp/omni-gguf --family qwen2_5_omni                      # tiny
    python scripts/make_tiny_gguf.py /tmp/omni-real --family qwen2_5_omni --size realistic     # 0.5B-class
    python bench/bench_gguf_omni.py /tmp/omni-gguf --repeats 3
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import free_port, http, running  # noqa: E402

from tests.audio_helpers import librivox_clips  # noqa: E402


def ask(base: str, wav: bytes, max_tokens: int) -> tuple[float, int]:
    """One streamed answer to the clip: seconds to its first token, and its tokens."""
    body = {"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}},
        {"type": "text", "text": "Answer the question you heard."}]}],
        "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
        "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, tokens = None, 0
    with http.stream("POST", base + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first, tokens


def measure(base: str, wav: bytes, clients: int, repeats: int, max_tokens: int) -> dict[str, float]:
    firsts, rates = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(lambda _: ask(base, wav, max_tokens), range(clients)))
        rates.append(sum(n for _, n in answers) / (time.perf_counter() - t0))
        firsts += [f for f, _ in answers]
    return {"ttft": statistics.median(firsts), "tok_s": statistics.median(rates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a folder from make_tiny_gguf.py (model.gguf, mmproj.gguf)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--clip", type=int, default=0, help="which LibriVox clip of tests/audio_helpers")
    args = parser.parse_args()
    path, transcript = librivox_clips()[args.clip]
    wav = Path(path).read_bytes()
    ways = {"cascade (Whisper -> thinker)": [], "thinker that hears (--mmproj)": ["--mmproj",
                                                                                 str(args.checkpoint / "mmproj.gguf")]}
    results = {}
    for name, extra in ways.items():
        port = free_port()
        cmd = [sys.executable, "-m", "omniserve", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--threads", str(args.threads), "--log-level", "warning", "--model-path",
               str(args.checkpoint / "model.gguf"), *extra, "--tts-model", "none", "--vision-model", "none",
               "--embedding-model", "none"]
        with running("omniserve", cmd, f"http://127.0.0.1:{port}", timeout=600) as base:
            ask(base, wav, 2)  # warm
            results[name] = {c: measure(base, wav, c, args.repeats, args.max_tokens) for c in args.clients}

    print(f"{args.checkpoint.name}: clip {Path(path).name} ({transcript[:40]}...), {args.max_tokens} tokens per "
          f"answer, {args.threads} threads, median of {args.repeats}")
    print(f"{'clients':>7}  {'way':<31} {'TTFT p50':>9} {'tok/s':>7}")
    for c in args.clients:
        for name in ways:
            r = results[name][c]
            print(f"{c:7d}  {name:<31} {r['ttft'] * 1000:7.0f}ms {r['tok_s']:7.1f}")
        cascade, hears = (results[name][c] for name in ways)
        print(f"{'':7}  {'hears / cascade':<31} {hears['ttft'] / cascade['ttft']:8.2f}x "
              f"{hears['tok_s'] / cascade['tok_s']:6.2f}x")


if __name__ == "__main__":
    main()
