"""Time to first token with a long shared system prompt: the first request against the ones
after it, with the prefix cache on, and with it off (`--disable-radix-cache`) side by side.

Each request has the same ~1,500-token system prompt and its own short question, streamed,
with max_tokens 1 from the default model (SmolLM2-135M). The first request decodes the whole
prompt; with the cache, the next ones decode only what follows the system prompt. Target: the
second request at least 5x faster than the first.

    python bench/bench_prefix_cache.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from common import free_port, http, running

SYSTEM = " ".join(f"Rule {i}: when the user asks about topic {i}, answer politely, briefly and in plain words."
                   for i in range(62))
QUESTIONS = ["What is 2+2?", "Name a colour.", "Where is Paris?", "What do cats eat?", "Is water wet?",
             "How many legs has a spider?"]


def ttft(base: str, question: str) -> tuple[float, int, int]:
    """Seconds to the first streamed token, prompt tokens, cached prompt tokens."""
    body = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            "max_tokens": 1, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, usage = None, {}
    with http.stream("POST", base + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"]:
                first = time.perf_counter() - t0
            usage = chunk.get("usage") or usage
    return first, usage["prompt_tokens"], (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)


def ttft_short(base: str) -> None:
    body = {"messages": [{"role": "user", "content": "Hello."}], "max_tokens": 1}
    http.post(base + "/v1/chat/completions", json=body).raise_for_status()


def run(flags: list[str], repeats: int) -> tuple[float, float, int, int]:
    """(first request's TTFT, median TTFT of the next `repeats`, prompt tokens, cached tokens)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "omniserve", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--asr-model", "none", "--tts-model", "none", "--vision-model", "none", "--embedding-model", "none",
           "--enable-cache-report", *flags]
    with running("omniserve", cmd, base):
        ttft_short(base)  # warm up the server without caching the system prompt
        first, tokens, _ = ttft(base, QUESTIONS[0])
        later = [ttft(base, QUESTIONS[1 + i % (len(QUESTIONS) - 1)]) for i in range(repeats)]
    return first, statistics.median(t for t, _, _ in later), tokens, later[-1][2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    on = run([], args.repeats)
    off = run(["--disable-radix-cache"], args.repeats)
    print(f"system prompt + question: {on[2]} tokens; cached on later requests: {on[3]}")
    print(f"{'prefix cache':>13} {'1st TTFT':>9} {'later TTFT (median)':>20} {'1st / later':>12}")
    for name, (first, later, _, _) in (("on", on), ("off", off)):
        print(f"{name:>13} {first:>8.3f}s {later:>19.3f}s {first / later:>11.1f}x")
    print(f"later requests, cache off / cache on: {off[1] / on[1]:.1f}x (target: 1st / later >= 5x with the cache)")


if __name__ == "__main__":
    main()
