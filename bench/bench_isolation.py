"""Isolation: what one request (or one busy stage) costs the others.

Starts a server on the default models and prints, in one run:
- completions with more prompts than running slots (9 and 20 prompts, 5 tokens each): the time to answer;
- embeddings and speech latency (median of 5), idle and with 64 streaming chats holding every thinker slot
  and its queue: with admission per stage they should barely move;
- a regex that expands into a huge automaton (`[ab]*a[ab]{14}`): the time to its 400 and the slowest
  /health answer meanwhile;
- a 30 MB prompt: the time to its 400 and the time of a chat sent meanwhile.

    python bench/bench_isolation.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, running  # noqa: E402

LONG_CHAT = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 400,
             "ignore_eos": True, "stream": True}


def median_latency(http: httpx.Client, path: str, body: dict, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        assert http.post(path, json=body).status_code == 200
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def busy_thinker(base: str, clients: int, stop: threading.Event) -> threading.Thread:
    """`clients` streaming chats, until `stop`."""
    async def main():
        async with httpx.AsyncClient(base_url=base, timeout=600,
                                     limits=httpx.Limits(max_connections=clients + 4)) as c:
            async def one():
                async with c.stream("POST", "/v1/chat/completions", json=LONG_CHAT) as r:
                    async for _ in r.aiter_lines():
                        if stop.is_set():
                            return

            await asyncio.gather(*(one() for _ in range(clients)), return_exceptions=True)

    thread = threading.Thread(target=lambda: asyncio.run(main()))
    thread.start()
    return thread


def timed_beside(http: httpx.Client, path: str, body: dict, probe) -> tuple[httpx.Response, float, float]:
    """Send `body` in a thread; meanwhile `probe()` repeatedly: (response, its time, the slowest probe)."""
    out: dict = {}

    def send():
        t0 = time.perf_counter()
        out["r"] = http.post(path, json=body)
        out["s"] = time.perf_counter() - t0

    thread = threading.Thread(target=send)
    thread.start()
    time.sleep(0.2)
    slowest = 0.0
    while thread.is_alive():
        t0 = time.perf_counter()
        probe()
        slowest = max(slowest, time.perf_counter() - t0)
        time.sleep(0.1)
    thread.join()
    return out["r"], out["s"], slowest


def main() -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "omniserve", "serve", "--host", "127.0.0.1", "--port", str(port), "--threads", "2"]
    with running("omniserve", cmd, f"http://127.0.0.1:{port}") as base, \
            httpx.Client(base_url=base, timeout=300) as http, httpx.Client(base_url=base, timeout=300) as side:
        for count in (9, 20):
            t0 = time.perf_counter()
            r = http.post("/v1/completions", json={"prompt": [str(i) for i in range(count)], "max_tokens": 5})
            print(f"{count} prompts x 5 tokens (8 slots): HTTP {r.status_code} in {time.perf_counter() - t0:.2f} s")
        embed = {"input": "a sentence"}
        speech = {"input": "Hello.", "response_format": "wav"}
        idle = median_latency(http, "/v1/embeddings", embed), median_latency(http, "/v1/audio/speech", speech)
        stop = threading.Event()
        chats = busy_thinker(base, 64, stop)
        while http.get("/get_load").json()["stages"]["thinker"]["queued"] < 50:
            time.sleep(0.2)
        thinker = http.get("/get_load").json()["stages"]["thinker"]
        busy = median_latency(http, "/v1/embeddings", embed), median_latency(http, "/v1/audio/speech", speech)
        stop.set()
        chats.join()
        print(f"thinker {thinker['running']} running, {thinker['queued']} queued: embeddings {idle[0] * 1000:.0f} ms "
              f"idle -> {busy[0] * 1000:.0f} ms; speech {idle[1] * 1000:.0f} ms -> {busy[1] * 1000:.0f} ms "
              f"({busy[0] / idle[0]:.1f}x, {busy[1] / idle[1]:.1f}x)")
        while http.get("/get_load").json()["running"]:
            time.sleep(0.2)
        r, took, slowest = timed_beside(http, "/v1/completions",
                                        {"prompt": "x", "max_tokens": 3, "regex": "[ab]*a[ab]{14}"},
                                        lambda: side.get("/health"))
        print(f"regex [ab]*a[ab]{{14}}: HTTP {r.status_code} after {took:.2f} s; slowest /health meanwhile "
              f"{slowest * 1000:.0f} ms")
        huge = {"prompt": "hello world " * 2_500_000, "max_tokens": 3}
        r, took, slowest = timed_beside(http, "/v1/completions", huge,
                                        lambda: side.post("/v1/chat/completions", json={
                                            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}))
        print(f"30 MB prompt: HTTP {r.status_code} after {took:.2f} s; slowest chat meanwhile {slowest:.2f} s")


if __name__ == "__main__":
    main()
