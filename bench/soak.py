"""Soak: many streaming chats plus embeddings, speech and transcription, round after round.

Each round runs for --seconds: --chats clients stream chats back to back, and one client each
loops over /v1/embeddings, /v1/audio/speech and /v1/audio/transcriptions. Then the load stops
and the round reports completed requests by route, errors by status (an immediate 503 past
the queue is clean; anything else is not), TTFT p50/p99 of the chats, whether /get_load came
back to zero, and the server's resident memory (the API process and its stage workers) before,
during and after. Memory must not grow round over round: the first round warms caches, so
later rounds are compared with it.

    python bench/soak.py                                   # starts a server; 64 chats, 2 rounds of 60 s
    python bench/soak.py --url http://127.0.0.1:8000 --rounds 3   # a server on this machine
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, running  # noqa: E402

CHAT = {"messages": [{"role": "user", "content": "Tell me about the sea."}], "max_tokens": 48, "stream": True}
SPEECH = {"input": "The quick brown fox jumps over the lazy dog.", "response_format": "wav"}
EMBED = {"input": ["a sentence to embed", "and another one"]}
MEMORY_SLACK = 0.10  # round-over-round growth allowed (allocator noise)
BACKOFF_S = 0.25  # after an error, before the next request


@dataclass
class Round:
    completed: Counter = field(default_factory=Counter)  # route -> requests that succeeded
    errors: Counter = field(default_factory=Counter)  # (route, status) -> count
    ttfts: list[float] = field(default_factory=list)
    rss_before: int = 0
    rss_during: int = 0
    rss_after: int = 0
    idle_after: bool = False

    @property
    def unclean(self) -> int:
        """Errors other than a 503 (a full queue is answered at once, and that is fine)."""
        return sum(n for (_, status), n in self.errors.items() if status != 503)


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def server_pid(base: str) -> int:
    """The API process of a server on this machine: the parent of its stage workers."""
    worker = httpx.get(base + "/get_model_info", timeout=10).json()["stages"][0]["pid"]
    return int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def _chat_loop(client: httpx.AsyncClient, stop: float, result: Round) -> None:
    while time.monotonic() < stop:
        t0 = time.monotonic()
        try:
            async with client.stream("POST", "/v1/chat/completions", json=CHAT) as r:
                if r.status_code != 200:
                    await r.aread()
                    result.errors["chat", r.status_code] += 1
                    await asyncio.sleep(BACKOFF_S)  # as a client told "at capacity, retry later" would
                    continue
                first = True
                async for line in r.aiter_lines():
                    if first and line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                        result.ttfts.append(time.monotonic() - t0)
                        first = False
                result.completed["chat"] += 1
        except httpx.HTTPError as exc:
            result.errors["chat", type(exc).__name__] += 1


async def _loop(client: httpx.AsyncClient, route: str, stop: float, result: Round, **request) -> None:
    while time.monotonic() < stop:
        try:
            r = await client.post(route, **request)
        except httpx.HTTPError as exc:
            result.errors[route, type(exc).__name__] += 1
            continue
        if r.status_code == 200:
            result.completed[route] += 1
        else:
            result.errors[route, r.status_code] += 1
            await asyncio.sleep(BACKOFF_S)


async def _round(base: str, pid: int, seconds: float, chats: int, wav: bytes) -> Round:
    result = Round(rss_before=tree_rss(pid))
    limits = httpx.Limits(max_connections=chats + 8, max_keepalive_connections=chats + 8)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:
        stop = time.monotonic() + seconds
        tasks = [asyncio.create_task(_chat_loop(client, stop, result)) for _ in range(chats)]
        tasks += [asyncio.create_task(_loop(client, "/v1/embeddings", stop, result, json=EMBED)),
                  asyncio.create_task(_loop(client, "/v1/audio/speech", stop, result, json=SPEECH)),
                  asyncio.create_task(_loop(client, "/v1/audio/transcriptions", stop, result,
                                            files={"file": ("speech.wav", wav, "audio/wav")}))]
        await asyncio.sleep(seconds / 2)
        result.rss_during = tree_rss(pid)
        await asyncio.gather(*tasks)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            load = (await client.get("/get_load")).json()
            if (load["running"], load["queued"]) == (0, 0):
                result.idle_after = True
                break
            await asyncio.sleep(0.2)
    result.rss_after = tree_rss(pid)
    return result


def soak(base: str, seconds: float = 60, rounds: int = 2, chats: int = 64) -> list[Round]:
    """Run the rounds against a server at `base` (on this machine); print and return them."""
    pid = server_pid(base)
    wav = httpx.post(base + "/v1/audio/speech", json=SPEECH, timeout=120).content
    results = []
    for i in range(rounds):
        r = asyncio.run(_round(base, pid, seconds, chats, wav))
        results.append(r)
        print(f"round {i + 1}: completed {dict(r.completed)}; errors {dict(r.errors) or 'none'}; "
              f"TTFT p50 {pct(r.ttfts, 50):.2f} s, p99 {pct(r.ttfts, 99):.2f} s; /get_load idle after: "
              f"{r.idle_after}; RSS MiB before {r.rss_before / 2**20:.0f}, during {r.rss_during / 2**20:.0f}, "
              f"after {r.rss_after / 2**20:.0f}", flush=True)
    if len(results) > 1:
        growth = results[-1].rss_after / results[0].rss_after - 1
        print(f"resident memory after the last round vs the first: {growth:+.1%} (allowed {MEMORY_SLACK:+.0%})")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a server running on this machine; default: start one")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chats", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.url:
        soak(args.url, args.seconds, args.rounds, args.chats)
        return
    port = free_port()
    cmd = [sys.executable, "-m", "omniserve", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(args.threads)]
    with running("omniserve", cmd, f"http://127.0.0.1:{port}") as base:
        soak(base, args.seconds, args.rounds, args.chats)


if __name__ == "__main__":
    main()
