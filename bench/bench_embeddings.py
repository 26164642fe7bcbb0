"""Sentences per second through `/v1/embeddings` vs MiniLM in-process, side by side in one run.

In-process: the same ONNX model and tokenizer (`models/minilm.py`), one sentence per call
(what a client sending one sentence per request costs the model) and 64 per call (the batch
the embedder stage builds). Server: one sentence per request from 1 and from 8 concurrent
clients; the embedder stage embeds the waiting sentences of all requests in one call.

    python bench/bench_embeddings.py --sentences 400 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from common import free_port, http, running

WORDS = "the a cat dog sea rain market city river song light stone quick slow bright old new".split()


def sentences(n: int) -> list[str]:
    return [" ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(6 + i % 10)) + "." for i in range(n)]


def in_process(texts: list[str], batch: int) -> float:
    from omniserve.models.minilm import MiniLm

    model = MiniLm(threads=1)
    model.embed(texts[:8])  # warm up
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        model.embed(texts[i:i + batch])
    return len(texts) / (time.perf_counter() - t0)


def served(base: str, texts: list[str], clients: int) -> float:
    def one(text: str) -> None:
        http.post(base + "/v1/embeddings", json={"input": text}).raise_for_status()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, texts))
    return len(texts) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    texts = sentences(args.sentences)
    raw = {b: statistics.median(in_process(texts, b) for _ in range(args.repeats)) for b in (1, 64)}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "omniserve", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--asr-model", "none", "--tts-model", "none", "--vision-model", "none"]
    with running("omniserve", cmd, base):
        served(base, texts[:20], 4)  # warm up
        server = {c: statistics.median(served(base, texts, c) for _ in range(args.repeats)) for c in (1, 8)}
    print(f"all-MiniLM-L6-v2 int8, {len(texts)} sentences of 6-15 words, median of {args.repeats}")
    print(f"in-process, 1 per call:  {raw[1]:8.1f} sentences/s")
    print(f"in-process, 64 per call: {raw[64]:8.1f} sentences/s")
    print(f"omniserve, 1 client:     {server[1]:8.1f} sentences/s ({server[1] / raw[1]:.2f}x in-process 1 per call)")
    print(f"omniserve, 8 clients:    {server[8]:8.1f} sentences/s ({server[8] / server[1]:.2f}x the 1-client rate)")


if __name__ == "__main__":
    main()
